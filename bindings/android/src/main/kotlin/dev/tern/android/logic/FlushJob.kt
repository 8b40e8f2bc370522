package dev.tern.android

import kotlin.coroutines.cancellation.CancellationException
import kotlin.time.Duration
import kotlin.time.Duration.Companion.seconds

/**
 * What one run of the background flush job does, independent of WorkManager: wait for
 * the process's instance to open (at most [START_WAIT]; none opened = nothing to send
 * from this process), then `flushAndWait`. [FlushOutcome.RETRY] when the upload did not
 * finish and runs are left. Cancelling the coroutine (WorkManager stopping the worker)
 * ends the native wait at once. Never throws anything but cancellation.
 */
internal object FlushJob {
    /** How long a run waits for the app to start Tern in a process WorkManager started. */
    val START_WAIT: Duration = 10.seconds

    /** Runs per one-shot job (the first included). */
    const val MAX_ATTEMPTS = 5

    suspend fun run(process: TernProcess, timeout: Duration, attempt: Int, log: (String, Throwable) -> Unit): FlushOutcome {
        try {
            val tern = process.awaitStarted(START_WAIT) ?: return FlushOutcome.SUCCESS
            if (tern.isOptedOut) return FlushOutcome.SUCCESS
            return when {
                tern.flushAndWait(timeout) -> FlushOutcome.SUCCESS
                attempt + 1 < MAX_ATTEMPTS -> FlushOutcome.RETRY
                else -> FlushOutcome.SUCCESS // the periodic job and the next background try again
            }
        } catch (e: CancellationException) {
            throw e
        } catch (e: Throwable) {
            log("background flush failed", e)
            return FlushOutcome.SUCCESS
        }
    }
}

/** What a flush run tells WorkManager. */
internal enum class FlushOutcome { SUCCESS, RETRY }
