// The WorkManager job that uploads what the device holds while the app is in the
// background: periodic (network required) and one-shot after each move to the
// background. What a run does is FlushJob (logic/, tested on the host JVM).
package dev.tern.android

import android.content.Context
import android.util.Log
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
import java.util.concurrent.TimeUnit
import kotlin.time.Duration
import kotlin.time.Duration.Companion.milliseconds
import kotlin.time.Duration.Companion.seconds

/**
 * Flushes the process's instance and waits until the device store is empty
 * (`Tern.flushAndWait`). Succeeds when it emptied, when the SDK is opted out, or when no
 * instance opened in this process within 10 s (the app did not start Tern in
 * `Application.onCreate`: nothing to send from here); asks WorkManager to retry
 * (exponential backoff from 30 s) when the upload did not finish, up to 5 runs. When
 * WorkManager stops the worker, the wait ends at once (the coroutine is cancelled).
 */
class TernFlushWorker(context: Context, params: WorkerParameters) : CoroutineWorker(context, params) {
    override suspend fun doWork(): Result {
        val timeout = inputData.getLong(KEY_TIMEOUT_MS, DEFAULT_TIMEOUT.inWholeMilliseconds).milliseconds
        return when (FlushJob.run(TernAndroid.process, timeout, runAttemptCount) { what, e -> Log.w(AndroidPlatform.TAG, what, e) }) {
            FlushOutcome.SUCCESS -> Result.success()
            FlushOutcome.RETRY -> Result.retry()
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

        /**
         * Enqueues the one-shot job, network required. `KEEP`: a job already enqueued or
         * running stays — a run in progress is never cancelled by the next move to the
         * background (it sends what was recorded since, too).
         */
        @JvmStatic
        fun scheduleOnce(context: Context) {
            val request = OneTimeWorkRequestBuilder<TernFlushWorker>()
                .setConstraints(connected())
                .setBackoffCriteria(BackoffPolicy.EXPONENTIAL, 30, TimeUnit.SECONDS)
                .build()
            WorkManager.getInstance(context).enqueueUniqueWork(BACKGROUND_WORK, ExistingWorkPolicy.KEEP, request)
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
