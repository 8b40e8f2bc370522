// The WorkManager job that uploads what the device holds while the app is in the
// background: periodic (network required) and one-shot after each move to the background.
package dev.tern.android

import android.content.Context
import androidx.work.BackoffPolicy
import androidx.work.Constraints
import androidx.work.CoroutineWorker
import androidx.work.ExistingPeriodicWorkPolicy
import androidx.work.ExistingWorkPolicy
import androidx.work.NetworkType
import androidx.work.OneTimeWorkRequestBuilder
import androidx.work.PeriodicWorkRequestBuilder
import androidx.work.WorkManager
import androidx.work.WorkerParameters
import dev.tern.ffi.TernException
import java.util.concurrent.TimeUnit
import kotlin.time.Duration
import kotlin.time.Duration.Companion.milliseconds
import kotlin.time.Duration.Companion.seconds

/**
 * Flushes the running SDK and waits until the device store is empty
 * (`Tern.flushAndWait`). Succeeds when it emptied, when the SDK is opted out, or when no
 * instance is running in this process within [START_WAIT] (the app did not start Tern in
 * `Application.onCreate`: nothing to send from here); asks WorkManager to retry
 * (exponential backoff from 30 s) when the upload did not finish, up to [MAX_ATTEMPTS].
 */
class TernFlushWorker(context: Context, params: WorkerParameters) : CoroutineWorker(context, params) {
    override suspend fun doWork(): Result {
        val tern = TernAndroid.awaitStarted(START_WAIT) ?: return Result.success()
        if (tern.isOptedOut) return Result.success()
        val timeout = inputData.getLong(KEY_TIMEOUT_MS, DEFAULT_TIMEOUT.inWholeMilliseconds).milliseconds
        val emptied = try {
            tern.flushAndWait(timeout)
        } catch (e: TernException) {
            TernAndroid.warn("background flush failed", e)
            return Result.success()
        }
        return when {
            emptied -> Result.success()
            runAttemptCount + 1 < MAX_ATTEMPTS -> Result.retry()
            else -> Result.success() // the periodic job and the next background try again
        }
    }

    companion object {
        /** Unique name of the periodic job. */
        const val PERIODIC_WORK = "dev.tern.flush.periodic"

        /** Unique name of the one-shot job enqueued when the app goes to the background. */
        const val BACKGROUND_WORK = "dev.tern.flush.background"

        /** Input key: how long one run waits for the upload (ms). */
        const val KEY_TIMEOUT_MS = "tern.flush.timeout_ms"

        /** How long one run waits for the upload by default. */
        val DEFAULT_TIMEOUT: Duration = 60.seconds

        /** How long a run waits for the app to start Tern in a process WorkManager started. */
        val START_WAIT: Duration = 10.seconds

        /** Runs per one-shot job (the first included). */
        const val MAX_ATTEMPTS = 5

        private fun connected() = Constraints.Builder().setRequiredNetworkType(NetworkType.CONNECTED).build()

        /** Enqueues (or updates) the periodic job: every [period] (15 min at least), network required. */
        @JvmStatic
        fun schedulePeriodic(context: Context, period: Duration) {
            val minutes = period.inWholeMinutes.coerceAtLeast(15)
            val request = PeriodicWorkRequestBuilder<TernFlushWorker>(minutes, TimeUnit.MINUTES)
                .setConstraints(connected())
                .setBackoffCriteria(BackoffPolicy.EXPONENTIAL, 30, TimeUnit.SECONDS)
                .build()
            WorkManager.getInstance(context)
                .enqueueUniquePeriodicWork(PERIODIC_WORK, ExistingPeriodicWorkPolicy.UPDATE, request)
        }

        /** Enqueues the one-shot job (replacing a pending one), network required. */
        @JvmStatic
        fun scheduleOnce(context: Context) {
            val request = OneTimeWorkRequestBuilder<TernFlushWorker>()
                .setConstraints(connected())
                .setBackoffCriteria(BackoffPolicy.EXPONENTIAL, 30, TimeUnit.SECONDS)
                .build()
            WorkManager.getInstance(context).enqueueUniqueWork(BACKGROUND_WORK, ExistingWorkPolicy.REPLACE, request)
        }

        /** Cancels both jobs. */
        @JvmStatic
        fun cancel(context: Context) {
            val wm = WorkManager.getInstance(context)
            wm.cancelUniqueWork(PERIODIC_WORK)
            wm.cancelUniqueWork(BACKGROUND_WORK)
        }
    }
}
