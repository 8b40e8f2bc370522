// Compile-only stand-ins (see README.md). Bodies throw: nothing here ever runs.
@file:Suppress("unused", "UNUSED_PARAMETER")

package android.os

object Build {
    @JvmField val MODEL: String = "stub"

    object VERSION {
        @JvmField val RELEASE: String = "stub"
    }
}

open class Bundle {
    open fun getString(key: String?): String? = throw UnsupportedOperationException("stub")
}

class Looper private constructor() {
    companion object {
        @JvmStatic fun getMainLooper(): Looper = throw UnsupportedOperationException("stub")
        @JvmStatic fun myLooper(): Looper? = throw UnsupportedOperationException("stub")
    }
}

open class Handler(looper: Looper) {
    fun post(r: Runnable): Boolean = throw UnsupportedOperationException("stub")
}
