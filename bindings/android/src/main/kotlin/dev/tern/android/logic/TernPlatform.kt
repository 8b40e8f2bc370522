// The Android services the glue uses, as an interface: AndroidPlatform (the adapter,
// ../AndroidPlatform.kt) implements it over the real APIs; the host-JVM tests implement
// it with recording fakes. Files in this directory import nothing from android.* or
// androidx.* (bindings/scripts/test-kotlin.sh compiles them on the host and checks it).
package dev.tern.android

import dev.tern.ffi.DeviceContext
import dev.tern.ffi.TernNetworkType
import java.io.File
import java.util.concurrent.Executor
import kotlin.time.Duration

/** Something attached that can be detached again. */
internal fun interface Detach {
    fun detach()
}

/**
 * Default-network events, as `ConnectivityManager.NetworkCallback` reports them; a
 * network is an opaque token compared with `==`.
 */
internal interface NetworkEvents {
    fun onAvailable(network: Any)
    fun onCapabilitiesChanged(network: Any, hasInternet: Boolean)
    fun onLost(network: Any)

    /** The kind of [network] (its transports), reported with its capabilities. */
    fun onTransport(network: Any, type: TernNetworkType)
}

/** Logcat priorities (the values of `android.util.Log`). */
internal object Priority {
    const val VERBOSE = 2
    const val DEBUG = 3
    const val INFO = 4
    const val WARN = 5
    const val ERROR = 6
}

/** What the glue needs from the platform. */
internal interface TernPlatform {
    /** True on the main (UI) thread. */
    val isMainThread: Boolean

    /** Runs [block] on the main thread later; never waits for it. */
    fun postToMain(block: () -> Unit)

    /** A serial queue off the main thread: the glue's calls into the SDK, in order. */
    val background: Executor

    /** `noBackupFilesDir/tern` (may touch the disk: not on the main thread). */
    fun defaultDataDir(): File

    /** The app's `versionName`, if known. */
    fun appVersion(): String?

    /** The process's name (`package` or `package:remote`), for messages. */
    fun processName(): String

    /** Observes the process lifecycle (`ProcessLifecycleOwner`); main thread only. */
    fun observeProcessLifecycle(onForeground: () -> Unit, onBackground: () -> Unit): Detach

    /**
     * Registers a default-network callback feeding [events]; returns the active network
     * and whether it has internet now, and the way to unregister.
     */
    fun observeNetwork(events: NetworkEvents): Pair<NetworkState, Detach>

    /** Enqueues or updates the periodic flush job (WorkManager, unique, network required). */
    fun schedulePeriodicFlush(period: Duration)

    /**
     * Enqueues the one-shot flush job after a move to the background. Must never cancel
     * a run in progress (WorkManager `ExistingWorkPolicy.KEEP`).
     */
    fun scheduleBackgroundFlush()

    /** Cancels both flush jobs. */
    fun cancelFlushJobs()

    /**
     * The app and the device at start: `versionCode`, OS version, model, screen size,
     * locale and time zone (may touch the disk: not on the main thread).
     */
    fun deviceContext(): DeviceContext

    /** The locale (BCP 47) and the time zone (IANA name) now. */
    fun localeAndTimeZone(): Pair<String?, String?>

    /**
     * Calls [onChange] (on any thread) when the locale or the time zone changes
     * (`ACTION_LOCALE_CHANGED`, `ACTION_TIMEZONE_CHANGED`); returns the way to stop.
     */
    fun observeLocaleAndTimeZone(onChange: () -> Unit): Detach

    /** Writes one line to the platform log (Logcat, tag `Tern`). */
    fun log(priority: Int, message: String, error: Throwable? = null)
}

/** The default network when observation starts. */
internal data class NetworkState(val active: Any?, val hasInternet: Boolean, val type: TernNetworkType? = null)
