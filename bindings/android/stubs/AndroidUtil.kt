// Compile-only stand-ins (see README.md). Bodies throw: nothing here ever runs.
@file:Suppress("unused", "UNUSED_PARAMETER")

package android.util

object Log {
    @JvmStatic fun w(tag: String, msg: String, tr: Throwable): Int = throw UnsupportedOperationException("stub")
    @JvmStatic fun e(tag: String, msg: String, tr: Throwable): Int = throw UnsupportedOperationException("stub")
    @JvmStatic fun println(priority: Int, tag: String, msg: String): Int = throw UnsupportedOperationException("stub")
    @JvmStatic fun getStackTraceString(tr: Throwable?): String = throw UnsupportedOperationException("stub")
}

open class DisplayMetrics {
    @JvmField var widthPixels: Int = 0
    @JvmField var heightPixels: Int = 0
}

object Base64 {
    const val DEFAULT = 0
    @JvmStatic fun decode(str: String?, flags: Int): ByteArray = throw UnsupportedOperationException("stub")
}
