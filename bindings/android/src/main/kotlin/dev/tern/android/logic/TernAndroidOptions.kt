package dev.tern.android

import dev.tern.LogLevel
import java.io.File
import kotlin.time.Duration
import kotlin.time.Duration.Companion.hours

/** The platform reported upstream and used by message targeting. */
internal const val ANDROID_PLATFORM = "android"

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
    /** The SDK's log lines at this level and above go to Logcat (tag `Tern`). */
    val logLevel: LogLevel = LogLevel.WARN,
    /**
     * The device context: build, OS, model, screen, locale and time zone given at start,
     * locale and time-zone changes (broadcasts) → `setLocale`/`setTimeZone`, and the
     * default network's kind → `setNetworkType` (with [connectivity]).
     */
    val deviceContext: Boolean = true,
)
