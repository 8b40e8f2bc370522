// Run by bindings/scripts/check-android.sh: the glue's WorkManager calls
// (TernFlushWorker.scheduleOnce / schedulePeriodic / cancel) against the recording
// WorkManager of the stubs. The one-shot job must use KEEP, so a flush in progress is
// never cancelled by the next move to the background (REPLACE would cancel it).
package dev.tern.android

import android.content.Context
import androidx.work.NetworkType
import androidx.work.PeriodicWorkRequest
import androidx.work.WorkManager
import kotlin.time.Duration.Companion.minutes

private object NoContext : Context() {
    override val applicationContext: Context get() = this
    override val noBackupFilesDir get() = throw UnsupportedOperationException("check")
    override val cacheDir get() = throw UnsupportedOperationException("check")
    override val packageManager get() = throw UnsupportedOperationException("check")
    override val packageName get() = "dev.tern.check"
    override fun <T> getSystemService(serviceClass: Class<T>): T = throw UnsupportedOperationException("check")
}

fun main() {
    val wm = WorkManager.recorder
    TernFlushWorker.scheduleOnce(NoContext)
    TernFlushWorker.scheduleOnce(NoContext)
    TernFlushWorker.schedulePeriodic(NoContext, 5.minutes)
    TernFlushWorker.cancel(NoContext)
    val expected = listOf(
        "enqueueUniqueWork dev.tern.flush.background KEEP",
        "enqueueUniqueWork dev.tern.flush.background KEEP",
        "enqueueUniquePeriodicWork dev.tern.flush.periodic UPDATE",
        "cancelUniqueWork dev.tern.flush.periodic",
        "cancelUniqueWork dev.tern.flush.background",
    )
    check(wm.calls == expected) { "WorkManager calls ${wm.calls}, expected $expected" }
    check(wm.requests.all { it.constraints?.requiredNetworkType == NetworkType.CONNECTED }) { "a job without the network constraint" }
    check((wm.requests[2] as PeriodicWorkRequest).intervalMinutes == 15L) { "the period is not raised to WorkManager's 15 min minimum" }
    println("work policy: one-shot flush KEEP (a running flush is never cancelled), periodic UPDATE, network required: ok")
}
