@file:Suppress("unused", "UNUSED_PARAMETER")

package android.util

object Log {
    @JvmStatic fun w(tag: String, msg: String, tr: Throwable): Int = throw UnsupportedOperationException("stub")
    @JvmStatic fun e(tag: String, msg: String, tr: Throwable): Int = throw UnsupportedOperationException("stub")
}

object Base64 {
    const val DEFAULT = 0
    @JvmStatic fun decode(str: String?, flags: Int): ByteArray = throw UnsupportedOperationException("stub")
}
