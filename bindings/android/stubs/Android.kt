// Compile-only stand-ins (see README.md). Bodies throw: nothing here ever runs.
@file:Suppress("unused", "UNUSED_PARAMETER")

package android.content

import java.io.File

abstract class Context {
    abstract val applicationContext: Context
    abstract val noBackupFilesDir: File
    abstract val cacheDir: File
    abstract val packageManager: android.content.pm.PackageManager
    abstract val packageName: String
    abstract fun <T> getSystemService(serviceClass: Class<T>): T
}

open class Intent {
    open fun getStringExtra(name: String?): String? = throw UnsupportedOperationException("stub")
}
