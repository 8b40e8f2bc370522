// The Android entry of Tern: starts the SDK off the main thread with Android defaults
// (data directory, app version, platform) and attaches the glue — process lifecycle,
// connectivity, WorkManager flush. Threading and wiring only: every decision is made by
// the Rust core.
package dev.tern.android

import android.content.Context
import android.content.pm.PackageManager
import android.util.Log
import dev.tern.ShutdownReport
import dev.tern.Tern
import dev.tern.TernConfig
import java.io.File
import kotlin.time.Duration
import kotlin.time.Duration.Companion.hours
import kotlin.time.Duration.Companion.seconds
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Deferred
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.SupervisorJob
import kotlinx.coroutines.async
import kotlinx.coroutines.flow.MutableStateFlow
import kotlinx.coroutines.flow.filterNotNull
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.sync.Mutex
import kotlinx.coroutines.sync.withLock
import kotlinx.coroutines.withContext
import kotlinx.coroutines.withTimeoutOrNull

/** What [TernAndroid.start] attaches besides the SDK. Every part is on by default. */
data class TernAndroidOptions(
    /** Data directory; `null` = [TernAndroid.defaultDataDir] (`noBackupFilesDir/tern`). */
    val dataDir: File? = null,
    /** `ProcessLifecycleOwner` → `onForeground`/`onBackground` (+ a one-shot flush job). */
    val lifecycle: Boolean = true,
    /** Default-network callback → `setNetworkAvailable` (with the state at start). */
    val connectivity: Boolean = true,
    /** A one-shot WorkManager flush each time the app goes to the background. */
    val backgroundFlush: Boolean = true,
    /** Period of the WorkManager flush job (15 min at least); `null` = none. */
    val periodicFlush: Duration? = 1.hours,
)

/**
 * Tern on Android. Start it once per process, from `Application.onCreate`:
 *
 * ```
 * TernAndroid.startAsync(this, "my-app", "my-key") { relay("r1", "r1.example.net:4433", "https://r1.example.net:8443") }
 * ```
 *
 * then use [current] (or `await()` the returned Deferred, or [awaitStarted]) wherever the
 * app records events. Start, stop and every disk access run on [Dispatchers.IO]; the
 * lifecycle observer is registered on the main thread but only hands work to a
 * background queue.
 */
object TernAndroid {
    /** The platform reported upstream and used by message targeting. */
    const val PLATFORM = "android"

    private const val TAG = "Tern"
    private val scope = CoroutineScope(SupervisorJob() + Dispatchers.IO)
    private val lock = Mutex()
    private val running = MutableStateFlow<Tern?>(null)
    private var glue: TernGlue? = null

    /**
     * The default data directory: `noBackupFilesDir/tern` (excluded from Auto Backup, as
     * the device id and the queued events must not be restored onto another device).
     * Touches the disk (Android creates `noBackupFilesDir` on first use): not on the main thread.
     */
    @JvmStatic
    fun defaultDataDir(context: Context): File = File(context.noBackupFilesDir, "tern")

    /**
     * Starts the SDK on [Dispatchers.IO] with the data directory of [options] (default
     * [defaultDataDir]), platform `android` and the app's `versionName`, then [configure]
     * (relays, batching, ...; it may override those defaults), and attaches the glue of
     * [options]. When the SDK is already running, returns the running instance unchanged.
     * Throws the core's `TernException.InvalidConfig` naming the field at fault.
     */
    suspend fun start(
        context: Context,
        appId: String,
        appKey: String,
        options: TernAndroidOptions = TernAndroidOptions(),
        configure: TernConfig.Builder.() -> Unit = {},
    ): Tern = withContext(Dispatchers.IO) {
        lock.withLock {
            running.value?.let { return@withLock it }
            val app = context.applicationContext
            val builder = TernConfig.builder(appId, appKey, options.dataDir ?: defaultDataDir(app))
                .platform(PLATFORM)
            appVersion(app)?.let { builder.appVersion(it) }
            builder.configure()
            val tern = Tern.startBlocking(builder.build())
            glue = TernGlue(app, tern, options).also { it.attach() }
            running.value = tern
            tern
        }
    }

    /** [start] in the background, for `Application.onCreate`; a failure is logged and rethrown by `await()`. */
    @JvmStatic
    @JvmOverloads
    fun startAsync(
        context: Context,
        appId: String,
        appKey: String,
        options: TernAndroidOptions = TernAndroidOptions(),
        configure: TernConfig.Builder.() -> Unit = {},
    ): Deferred<Tern> = scope.async { start(context, appId, appKey, options, configure) }.also { d ->
        d.invokeOnCompletion { e -> if (e != null) Log.e(TAG, "Tern did not start", e) }
    }

    /** The running instance, or `null` before [start] finished and after [stop]. */
    @JvmStatic
    val current: Tern? get() = running.value

    /** Waits for the running instance at most [timeout]; `null` if none started by then. */
    suspend fun awaitStarted(timeout: Duration): Tern? =
        withTimeoutOrNull(timeout) { running.filterNotNull().first() }

    /**
     * Detaches the glue, cancels the flush jobs and shuts the SDK down (waiting at most
     * [timeout]). Returns `null` when it was not running. A later [start] starts afresh.
     */
    suspend fun stop(timeout: Duration = 5.seconds): ShutdownReport? = withContext(Dispatchers.IO) {
        lock.withLock {
            val tern = running.value ?: return@withLock null
            running.value = null
            glue?.detach()
            glue = null
            try {
                tern.shutdown(timeout)
            } finally {
                tern.close()
            }
        }
    }

    private fun appVersion(context: Context): String? = try {
        @Suppress("DEPRECATION")
        context.packageManager.getPackageInfo(context.packageName, 0).versionName
    } catch (e: PackageManager.NameNotFoundException) {
        null
    }

    internal fun warn(what: String, e: Throwable) {
        Log.w(TAG, what, e)
    }
}
