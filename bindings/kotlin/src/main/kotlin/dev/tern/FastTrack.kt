// The hot path of Tern.track: the event encoded into one byte buffer and handed to the
// native `tern_fast_track` in a single JNA direct call with primitive arguments (the
// generated path makes four JNA calls, each with a call-status Structure that JNA copies
// by reflection). The native side decodes it into the same `track` call — state,
// counting and reporting are unchanged (bindings/src/fast.rs, which documents the
// format). Falls back to the generated path when the function is unavailable.
package dev.tern

import com.sun.jna.Native

internal object FastTrack {
    /** The native function is bound. */
    val available: Boolean = try {
        Native.register(
            FastTrack::class.java,
            System.getProperty("uniffi.component.tern_bindings.libraryOverride") ?: "tern_bindings",
        )
        true
    } catch (e: Throwable) {
        false
    }

    @JvmStatic
    @Suppress("FunctionName")
    private external fun tern_fast_track(id: Long, payload: ByteArray, len: Int): Int

    private val encoders = ThreadLocal.withInitial { Encoder() }

    /**
     * Records [name] with [properties] on instance [id]; false when the native side does
     * not know the instance (the caller then uses the generated path).
     */
    fun track(id: Long, name: String, properties: Map<String, Any>): Boolean {
        val e = encoders.get()
        e.len = 0
        e.text(name)
        e.u32(properties.size)
        for ((key, v) in properties) {
            e.text(key)
            when (v) {
                is String -> { e.byte(0); e.text(v) }
                is Int -> { e.byte(1); e.u64(v.toLong()) }
                is Long -> { e.byte(1); e.u64(v) }
                is Short -> { e.byte(1); e.u64(v.toLong()) }
                is Byte -> { e.byte(1); e.u64(v.toLong()) }
                is Double -> { e.byte(2); e.u64(v.toRawBits()) }
                is Float -> { e.byte(2); e.u64(v.toDouble().toRawBits()) }
                is Boolean -> { e.byte(3); e.byte(if (v) 1 else 0) }
                // Refused (InvalidEvent naming the property) and counted by the native side.
                else -> { e.byte(4); e.text(v.javaClass.name) }
            }
        }
        // -2: unknown instance; -1 cannot happen (the array is never null). 0, 1 (refused,
        // already counted and reported) and -3 (a contained panic) are final.
        return tern_fast_track(id, e.buf, e.len) != -2
    }

    /** A growable little-endian buffer, one per thread. */
    private class Encoder {
        var buf = ByteArray(512)
        var len = 0

        private fun room(n: Int) {
            if (len + n > buf.size) buf = buf.copyOf(maxOf(buf.size * 2, len + n))
        }

        fun byte(b: Int) {
            room(1)
            buf[len++] = b.toByte()
        }

        fun u32(v: Int) {
            room(4)
            for (i in 0 until 4) buf[len++] = (v ushr (8 * i)).toByte()
        }

        fun u64(v: Long) {
            room(8)
            for (i in 0 until 8) buf[len++] = (v ushr (8 * i)).toByte()
        }

        fun text(s: String) {
            // ASCII, the common case, is copied as is; anything else is encoded.
            var ascii = true
            for (c in s) if (c.code >= 0x80) { ascii = false; break }
            if (ascii) {
                u32(s.length)
                room(s.length)
                for (c in s) buf[len++] = c.code.toByte()
            } else {
                val bytes = s.encodeToByteArray()
                u32(bytes.size)
                room(bytes.size)
                bytes.copyInto(buf, len)
                len += bytes.size
            }
        }
    }
}
