// Compile-only stand-ins (see README.md). Bodies throw: nothing here ever runs.
@file:Suppress("unused", "UNUSED_PARAMETER")

package android.content.res

open class Resources {
    open val displayMetrics: android.util.DisplayMetrics get() = throw UnsupportedOperationException("stub")
}
