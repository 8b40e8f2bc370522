@file:Suppress("unused", "UNUSED_PARAMETER")

package androidx.work.testing

import android.content.Context
import androidx.work.Data
import androidx.work.ListenableWorker

class TestListenableWorkerBuilder<W : ListenableWorker>(context: Context, workerClass: Class<W>) {
    fun setInputData(inputData: Data): TestListenableWorkerBuilder<W> = throw UnsupportedOperationException("stub")
    fun build(): W = throw UnsupportedOperationException("stub")
}

inline fun <reified W : ListenableWorker> TestListenableWorkerBuilder(context: Context): TestListenableWorkerBuilder<W> =
    TestListenableWorkerBuilder(context, W::class.java)
