// Instrumented tests of the Android binding (AndroidPlatform, TernAndroid,
// TernFlushWorker) on a device: the real ProcessLifecycleOwner, ConnectivityManager and
// WorkManager. The glue's logic is also run on the host JVM against fakes
// (bindings/android/src/test, bindings/scripts/test-kotlin.sh).
package dev.tern.android

import androidx.test.ext.junit.runners.AndroidJUnit4
import androidx.test.platform.app.InstrumentationRegistry
import androidx.work.ListenableWorker
import androidx.work.testing.TestListenableWorkerBuilder
import dev.tern.TernState
import java.io.File
import java.util.UUID
import kotlin.time.Duration.Companion.seconds
import kotlinx.coroutines.runBlocking
import org.junit.After
import org.junit.Assert.assertEquals
import org.junit.Assert.assertNotNull
import org.junit.Assert.assertNotSame
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
    fun startWithDefaultsIsUsableAtOnceAndStopAllowsARestart(): Unit = runBlocking {
        val tern = TernAndroid.start(context, "demo", "demo-key", TernAndroidOptions(periodicFlush = null))
        tern.track("glue_event") // before it has opened: kept
        assertSame(tern, TernAndroid.current)
        assertSame(tern, TernAndroid.start(context, "demo", "demo-key"))
        assertSame(tern, TernAndroid.awaitStarted(30.seconds))
        assertTrue(tern.awaitApplied(10.seconds))
        assertTrue(File(context.noBackupFilesDir, "tern").listFiles()!!.isNotEmpty())
        assertNotNull(tern.stats.deviceId)
        assertNotNull(TernAndroid.stop())
        assertEquals(TernState.STOPPED, tern.state)
        tern.track("after stop") // a counted no-op
        assertEquals(1uL, tern.stats.refusedAfterStop)
        assertNotSame(tern, TernAndroid.current)
        val again = TernAndroid.start(context, "demo", "demo-key", TernAndroidOptions(periodicFlush = null))
        assertSame(again, TernAndroid.awaitStarted(30.seconds))
        assertTrue(again.awaitApplied(10.seconds))
        assertTrue("the event survived the restart", again.stats.queuedEvents >= 1u)
        again.deleteLocalData()
    }

    @Test
    fun startOnTheMainThreadInRunBlockingDoesNotDeadlock() {
        var started: Any? = null
        InstrumentationRegistry.getInstrumentation().runOnMainSync {
            started = runBlocking {
                TernAndroid.start(context, "demo", "demo-key", options())
                TernAndroid.awaitStarted(30.seconds)
            }
        }
        assertNotNull(started)
    }

    @Test
    fun flushWorkerSucceedsWithoutAStartedInstance(): Unit = runBlocking {
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
