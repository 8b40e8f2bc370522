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
    open val resources: android.content.res.Resources get() = throw UnsupportedOperationException("stub")
    open fun registerReceiver(receiver: BroadcastReceiver?, filter: IntentFilter): Intent? = throw UnsupportedOperationException("stub")
    open fun unregisterReceiver(receiver: BroadcastReceiver): Unit = throw UnsupportedOperationException("stub")
}

abstract class BroadcastReceiver {
    abstract fun onReceive(context: Context, intent: Intent)
}

open class Intent {
    companion object {
        const val ACTION_LOCALE_CHANGED = "android.intent.action.LOCALE_CHANGED"
        const val ACTION_TIMEZONE_CHANGED = "android.intent.action.TIMEZONE_CHANGED"
    }

    open fun getStringExtra(name: String?): String? = throw UnsupportedOperationException("stub")
}

open class IntentFilter {
    fun addAction(action: String): Unit = throw UnsupportedOperationException("stub")
}

