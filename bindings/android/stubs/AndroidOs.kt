@file:Suppress("unused", "UNUSED_PARAMETER")

package android.os

open class Bundle {
    open fun getString(key: String?): String? = throw UnsupportedOperationException("stub")
}
