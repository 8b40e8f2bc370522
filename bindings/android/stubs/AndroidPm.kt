@file:Suppress("unused", "UNUSED_PARAMETER")

package android.content.pm

abstract class PackageManager {
    @Deprecated("API 33: use getPackageInfo(String, PackageInfoFlags)")
    abstract fun getPackageInfo(packageName: String, flags: Int): PackageInfo

    open class NameNotFoundException : Exception()
}

open class PackageInfo {
    @JvmField var versionName: String? = null
    open val longVersionCode: Long get() = throw UnsupportedOperationException("stub")
}
