// The Android entry of Tern: an instance the app can use at once, opened off the main
// thread with Android defaults (data directory, app version, platform), and the glue —
// process lifecycle, connectivity, WorkManager flush, Logcat. The logic lives in
// logic/ (platform-free, run by the host-JVM tests against fakes); this file and
// AndroidPlatform.kt only bind it to the Android APIs.
package dev.tern.android

import android.content.Context
import dev.tern.ShutdownReport
import dev.tern.Tern
import dev.tern.TernConfig
import java.io.File
import kotlin.time.Duration
import kotlin.time.Duration.Companion.seconds

/**
 * Tern on Android. Start it once per process, from `Application.onCreate` (any thread,
 * the main thread included — it returns at once):
 *
 * ```
 * val tern = TernAndroid.start(this, "my-app", "my-key") { relay("r1", "r1.example.net:4433", "https://r1.example.net:8443") }
 * ```
 *
 * [current] is usable at once and always: calls made before the SDK has opened are kept
 * (bounded) and applied in order; after [stop] every reference held is a counted no-op.
 * Opening, stopping and every disk access run off the main thread; nothing here waits
 * for the main thread.
 */
object TernAndroid {
    /** The platform reported upstream and used by message targeting. */
    const val PLATFORM = ANDROID_PLATFORM

    internal val process = TernProcess()

    /**
     * The default data directory: `noBackupFilesDir/tern` (excluded from Auto Backup, as
     * the device id and the queued events must not be restored onto another device).
     * Touches the disk (Android creates `noBackupFilesDir` on first use): not on the main thread.
     */
    @JvmStatic
    fun defaultDataDir(context: Context): File = File(context.noBackupFilesDir, "tern")

    /**
     * Returns the process's instance at once and opens it on a background thread with
     * the data directory of [options] (default [defaultDataDir]), platform `android` and
     * the app's `versionName`, then [configure] (relays, batching, ...; it may override
     * those defaults), and attaches the glue of [options]. Already started: returns the
     * running instance unchanged. When opening fails — an invalid config, or the data
     * directory held by another process (a `:remote` process: see `TernAndroidOptions.dataDir`)
     * — the reason is logged once and the instance stays a counted no-op.
     */
    @JvmStatic
    @JvmOverloads
    fun start(
        context: Context,
        appId: String,
        appKey: String,
        options: TernAndroidOptions = TernAndroidOptions(),
        configure: TernConfig.Builder.() -> Unit = {},
    ): Tern = process.start(AndroidPlatform(context.applicationContext), appId, appKey, options, configure)

    /** The process's instance: never null; not started until [start]. */
    @JvmStatic
    val current: Tern get() = process.current

    /** Waits until [start] has opened the instance, at most [timeout]; `null` if it has not, or could not. */
    suspend fun awaitStarted(timeout: Duration): Tern? = process.awaitStarted(timeout)

    /**
     * Detaches the glue, cancels the flush jobs and shuts the SDK down (waiting at most
     * [timeout], off the caller's thread). References the app still holds become counted
     * no-ops; [current] is a fresh instance that a later [start] opens. `null` when it
     * was not started.
     */
    suspend fun stop(timeout: Duration = 5.seconds): ShutdownReport? = process.stop(timeout)
}
