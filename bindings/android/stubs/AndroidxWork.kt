@file:Suppress("unused", "UNUSED_PARAMETER")

package androidx.work

import android.content.Context
import java.util.concurrent.TimeUnit

class Data {
    fun getLong(key: String, defaultValue: Long): Long = throw UnsupportedOperationException("stub")
}

fun workDataOf(vararg pairs: Pair<String, Any?>): Data = throw UnsupportedOperationException("stub")

class WorkerParameters

enum class NetworkType { NOT_REQUIRED, CONNECTED, UNMETERED, NOT_ROAMING, METERED, TEMPORARILY_UNMETERED }

enum class BackoffPolicy { EXPONENTIAL, LINEAR }

enum class ExistingWorkPolicy { REPLACE, KEEP, APPEND, APPEND_OR_REPLACE }

enum class ExistingPeriodicWorkPolicy { REPLACE, KEEP, UPDATE, CANCEL_AND_REENQUEUE }

class Constraints {
    class Builder {
        fun setRequiredNetworkType(networkType: NetworkType): Builder = throw UnsupportedOperationException("stub")
        fun build(): Constraints = throw UnsupportedOperationException("stub")
    }
}

abstract class ListenableWorker(appContext: Context, workerParams: WorkerParameters) {
    val inputData: Data get() = throw UnsupportedOperationException("stub")
    val runAttemptCount: Int get() = throw UnsupportedOperationException("stub")

    abstract class Result {
        companion object {
            @JvmStatic fun success(): Result = throw UnsupportedOperationException("stub")
            @JvmStatic fun retry(): Result = throw UnsupportedOperationException("stub")
            @JvmStatic fun failure(): Result = throw UnsupportedOperationException("stub")
        }
    }
}

abstract class CoroutineWorker(appContext: Context, params: WorkerParameters) : ListenableWorker(appContext, params) {
    abstract suspend fun doWork(): Result
}

abstract class WorkRequest

class OneTimeWorkRequest : WorkRequest() {
    class Builder(workerClass: Class<out ListenableWorker>) {
        fun setConstraints(constraints: Constraints): Builder = throw UnsupportedOperationException("stub")
        fun setBackoffCriteria(policy: BackoffPolicy, delay: Long, unit: TimeUnit): Builder = throw UnsupportedOperationException("stub")
        fun setInputData(data: Data): Builder = throw UnsupportedOperationException("stub")
        fun build(): OneTimeWorkRequest = throw UnsupportedOperationException("stub")
    }
}

class PeriodicWorkRequest : WorkRequest() {
    class Builder(workerClass: Class<out ListenableWorker>, repeatInterval: Long, repeatIntervalTimeUnit: TimeUnit) {
        fun setConstraints(constraints: Constraints): Builder = throw UnsupportedOperationException("stub")
        fun setBackoffCriteria(policy: BackoffPolicy, delay: Long, unit: TimeUnit): Builder = throw UnsupportedOperationException("stub")
        fun build(): PeriodicWorkRequest = throw UnsupportedOperationException("stub")
    }
}

inline fun <reified W : ListenableWorker> OneTimeWorkRequestBuilder(): OneTimeWorkRequest.Builder =
    OneTimeWorkRequest.Builder(W::class.java)

inline fun <reified W : ListenableWorker> PeriodicWorkRequestBuilder(
    repeatInterval: Long,
    repeatIntervalTimeUnit: TimeUnit,
): PeriodicWorkRequest.Builder = PeriodicWorkRequest.Builder(W::class.java, repeatInterval, repeatIntervalTimeUnit)

interface Operation

abstract class WorkManager {
    abstract fun enqueueUniqueWork(uniqueWorkName: String, existingWorkPolicy: ExistingWorkPolicy, work: OneTimeWorkRequest): Operation
    abstract fun enqueueUniquePeriodicWork(
        uniqueWorkName: String,
        existingPeriodicWorkPolicy: ExistingPeriodicWorkPolicy,
        periodicWork: PeriodicWorkRequest,
    ): Operation
    abstract fun cancelUniqueWork(uniqueWorkName: String): Operation

    companion object {
        @JvmStatic fun getInstance(context: Context): WorkManager = throw UnsupportedOperationException("stub")
    }
}
