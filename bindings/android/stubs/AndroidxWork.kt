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

class Constraints(val requiredNetworkType: NetworkType = NetworkType.NOT_REQUIRED) {
    class Builder {
        private var type = NetworkType.NOT_REQUIRED
        fun setRequiredNetworkType(networkType: NetworkType): Builder = apply { type = networkType }
        fun build(): Constraints = Constraints(type)
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

// The request builders and WorkManager record what they are given (no scheduling), so
// check-android.sh can run the glue's WorkManager calls (bindings/android/stubs/check).
abstract class WorkRequest {
    var constraints: Constraints? = null
}

class OneTimeWorkRequest : WorkRequest() {
    class Builder(workerClass: Class<out ListenableWorker>) {
        private val request = OneTimeWorkRequest()
        fun setConstraints(constraints: Constraints): Builder = apply { request.constraints = constraints }
        fun setBackoffCriteria(policy: BackoffPolicy, delay: Long, unit: TimeUnit): Builder = this
        fun setInputData(data: Data): Builder = this
        fun build(): OneTimeWorkRequest = request
    }
}

class PeriodicWorkRequest(val intervalMinutes: Long) : WorkRequest() {
    class Builder(workerClass: Class<out ListenableWorker>, repeatInterval: Long, repeatIntervalTimeUnit: TimeUnit) {
        private val request = PeriodicWorkRequest(repeatIntervalTimeUnit.toMinutes(repeatInterval))
        fun setConstraints(constraints: Constraints): Builder = apply { request.constraints = constraints }
        fun setBackoffCriteria(policy: BackoffPolicy, delay: Long, unit: TimeUnit): Builder = this
        fun build(): PeriodicWorkRequest = request
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
        /** What `getInstance` returns (a recorder). */
        val recorder = RecordingWorkManager()
        @JvmStatic fun getInstance(context: Context): WorkManager = recorder
    }
}

/** Records every call as `"<call> <name> <policy>"`. */
class RecordingWorkManager : WorkManager() {
    val calls = mutableListOf<String>()
    val requests = mutableListOf<WorkRequest>()
    private val done = object : Operation {}

    override fun enqueueUniqueWork(uniqueWorkName: String, existingWorkPolicy: ExistingWorkPolicy, work: OneTimeWorkRequest): Operation {
        calls += "enqueueUniqueWork $uniqueWorkName $existingWorkPolicy"
        requests += work
        return done
    }

    override fun enqueueUniquePeriodicWork(
        uniqueWorkName: String,
        existingPeriodicWorkPolicy: ExistingPeriodicWorkPolicy,
        periodicWork: PeriodicWorkRequest,
    ): Operation {
        calls += "enqueueUniquePeriodicWork $uniqueWorkName $existingPeriodicWorkPolicy"
        requests += periodicWork
        return done
    }

    override fun cancelUniqueWork(uniqueWorkName: String): Operation {
        calls += "cancelUniqueWork $uniqueWorkName"
        return done
    }
}
