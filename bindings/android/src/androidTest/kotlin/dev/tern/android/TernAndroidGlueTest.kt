// Instrumented tests of the Android glue: TernAndroid start/stop with the Android
// defaults, the lifecycle observer, the network monitor and the flush worker.
package dev.tern.android

import androidx.lifecycle.Lifecycle
import androidx.lifecycle.ProcessLifecycleOwner
import androidx.test.ext.junit.runners.AndroidJUnit4
import androidx.test.platform.app.InstrumentationRegistry
import androidx.work.ListenableWorker
import androidx.work.testing.TestListenableWorkerBuilder
import java.io.File
import java.util.UUID
import java.util.concurrent.CopyOnWriteArrayList
import kotlin.time.Duration.Companion.seconds
import kotlinx.coroutines.runBlocking
import org.junit.After
import org.junit.Assert.assertEquals
import org.junit.Assert.assertNotNull
import org.junit.Assert.assertNull
import org.junit.Assert.assertSame
import org.junit.Assert.assertTrue
import org.junit.Test
import org.junit.runner.RunWith

@RunWith(AndroidJUnit4::class)
class TernAndroidGlueTest {
    private val context = InstrumentationRegistry.getInstrumentation().targetContext

    private fun options(dir: File? = File(context.cacheDir, "tern-glue-${UUID.randomUUID()}")) =
        TernAndroidOptions(dataDir = dir, periodicFlush = null)

    @After
    fun stop() {
        runBlocking { TernAndroid.stop() }
    }

    @Test
    fun defaultDataDirIsInNoBackupFiles() {
        assertEquals(File(context.noBackupFilesDir, "tern"), TernAndroid.defaultDataDir(context))
    }

    @Test
    fun startWithDefaultsIsIdempotentAndStopAllowsARestart(): Unit = runBlocking {
        val tern = TernAndroid.start(context, "demo", "demo-key", TernAndroidOptions(periodicFlush = null))
        assertSame(tern, TernAndroid.current)
        assertSame(tern, TernAndroid.start(context, "demo", "demo-key"))
        tern.track("glue_event")
        assertTrue(tern.awaitApplied(10.seconds))
        assertTrue(File(context.noBackupFilesDir, "tern").listFiles()!!.isNotEmpty())
        assertNotNull(tern.stats.deviceId)
        val report = TernAndroid.stop()
        assertNotNull(report)
        assertNull(TernAndroid.current)
        val again = TernAndroid.start(context, "demo", "demo-key", TernAndroidOptions(periodicFlush = null))
        assertTrue(again.awaitApplied(10.seconds))
        assertTrue("the event survived the restart", again.stats.queuedEvents >= 1u)
        again.deleteLocalData()
    }

    @Test
    fun startAsyncAndAwaitStarted(): Unit = runBlocking {
        assertNull(TernAndroid.awaitStarted(0.seconds))
        val deferred = TernAndroid.startAsync(context, "demo", "demo-key", options())
        val tern = TernAndroid.awaitStarted(30.seconds)
        assertSame(deferred.await(), tern)
    }

    @Test
    fun lifecycleObserverForwardsStartAndStop(): Unit = runBlocking {
        val tern = TernAndroid.start(context, "demo", "demo-key", options())
        // The instrumentation process has no visible activity, so the process lifecycle
        // stays at CREATED; drive an observer as the lifecycle would.
        val state = ProcessLifecycleOwner.get().lifecycle.currentState
        assertTrue("process lifecycle is $state", state.isAtLeast(Lifecycle.State.CREATED))
        val seen = CopyOnWriteArrayList<String>()
        val observer = TernLifecycleObserver(onForeground = { seen += "fg" }, onBackground = { seen += "bg" })
        observer.onStart(ProcessLifecycleOwner.get())
        observer.onStop(ProcessLifecycleOwner.get())
        assertEquals(listOf("fg", "bg"), seen)
        tern.onForeground() // what the glue's queue calls
        tern.onBackground()
        assertTrue(tern.awaitApplied(10.seconds))
    }

    @Test
    fun networkMonitorReportsTheStateAtStart() {
        val seen = CopyOnWriteArrayList<Boolean>()
        val monitor = TernNetworkMonitor(context) { seen += it }
        monitor.start()
        try {
            assertEquals(monitor.isConnected(), seen.first())
        } finally {
            monitor.stop()
        }
    }

    @Test
    fun flushWorkerSucceedsWithoutARunningInstance(): Unit = runBlocking {
        val worker = TestListenableWorkerBuilder<TernFlushWorker>(context).build()
        assertEquals(ListenableWorker.Result.success(), worker.doWork())
    }

    @Test
    fun flushWorkerRetriesWhenTheUploadDidNotFinish(): Unit = runBlocking {
        // No relay configured: nothing can upload, so the store never empties.
        val tern = TernAndroid.start(context, "demo", "demo-key", options())
        tern.track("waiting")
        val worker = TestListenableWorkerBuilder<TernFlushWorker>(context)
            .setInputData(androidx.work.workDataOf(TernFlushWorker.KEY_TIMEOUT_MS to 500L))
            .build()
        assertEquals(ListenableWorker.Result.retry(), worker.doWork())
        tern.optOut(true)
        assertEquals(ListenableWorker.Result.success(), worker.doWork())
    }
}
