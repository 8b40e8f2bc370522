// The Android glue's logic (bindings/android/src/main/kotlin/dev/tern/android/logic)
// on the host JVM, against the real native library and a recording fake of the
// platform (FakePlatform): start, background, foreground, network loss, worker run and
// stop, stop, a second process, and a start from a blocked main thread.
package dev.tern.android

import dev.tern.TernState
import java.io.File
import java.nio.file.Files
import java.util.concurrent.TimeUnit
import kotlin.time.Duration
import kotlin.time.Duration.Companion.milliseconds
import kotlin.time.Duration.Companion.seconds
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.async
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import org.junit.jupiter.api.AfterEach
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertNotNull
import org.junit.jupiter.api.Assertions.assertNotSame
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertSame
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test

class TernGlueTest {
    private val dir: File = Files.createTempDirectory("tern-glue").toFile().also(File::deleteOnExit)
    private val platform = FakePlatform(File(dir, "tern"))
    private val process = TernProcess()
    private val options = TernAndroidOptions(periodicFlush = 1.hours())

    private fun Int.hours(): Duration = (this * 3600).seconds

    @AfterEach
    fun tearDown() {
        runBlocking { process.stop(30.seconds) }
        platform.close()
    }

    // Lifecycle events off: these tests count the events they record (the context test
    // turns them on).
    private fun start(p: TernProcess = process, pl: FakePlatform = platform) =
        p.start(pl, "demo", "demo-key", options) { autoLifecycle(false) }

    private fun awaitTrue(what: String, condition: () -> Boolean) {
        val deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(60)
        while (!condition()) {
            check(System.nanoTime() < deadline) { "not within 60 s: $what" }
            Thread.sleep(10)
        }
    }

    @Test
    fun `start hands out an instance at once and keeps calls until it opens`() {
        assertEquals(TernState.NOT_STARTED, process.current.state)
        process.current.track("before start")
        val release = platform.holdQueue() // the open cannot run yet
        val tern = start()
        assertSame(tern, process.current)
        assertSame(tern, start(), "a second start returns the same instance")
        tern.track("while opening", mapOf("n" to 1))
        tern.identify("u1")
        assertEquals(TernState.NOT_STARTED, tern.state)
        assertEquals(3uL, tern.stats.pendingCalls)
        release.countDown()
        val opened = runBlocking { process.awaitStarted(60.seconds) }
        assertSame(tern, opened)
        assertTrue(runBlocking { tern.awaitApplied(30.seconds) })
        val s = tern.stats
        assertEquals(2uL, s.queuedEvents)
        assertEquals("u1", s.userId)
        assertEquals(listOf("fake-tern-glue"), platform.dataDirThreads, "data directory resolved off the main thread")
        platform.drain()
        assertEquals(listOf("periodic:${1.hours()}"), platform.enqueued.toList())
        assertEquals(1, platform.lifecycleObservers.size)
        assertEquals(1, platform.networkCallbacks.size)
        assertEquals(emptyList<String>(), platform.violations.toList())
    }

    @Test
    fun `a runBlocking start on the main thread does not deadlock`() {
        // Called on the main thread: the observer is added there directly.
        val opened = platform.onMain { runBlocking { start(); process.awaitStarted(60.seconds) } }
        assertNotNull(opened)
        platform.drain()
        assertEquals(1, platform.lifecycleObservers.size)
        assertEquals(emptyList<String>(), platform.violations.toList())
    }

    @Test
    fun `a start from another thread while the main thread blocks on it does not deadlock`() {
        // The main thread waits for the start; the observer is posted to it, not awaited.
        val opened = platform.onMain {
            runBlocking {
                val t = async(Dispatchers.IO) { start() }.await()
                withTimeout(60.seconds) { process.awaitStarted(60.seconds) }.also { assertSame(t, it) }
            }
        }
        assertNotNull(opened)
        platform.drain()
        assertEquals(1, platform.lifecycleObservers.size, "attached once the main thread was free")
        assertEquals(emptyList<String>(), platform.violations.toList())
    }

    @Test
    fun `foreground and background drive sessions and schedule the background flush`() {
        val tern = start()
        assertNotNull(runBlocking { process.awaitStarted(60.seconds) })
        platform.drain()
        platform.foreground()
        platform.drain()
        assertNotNull(tern.currentSession, "foreground opens a session")
        tern.track("in session")
        platform.background()
        platform.drain()
        assertEquals(1, platform.enqueued.count { it == "background" })
        platform.foreground()
        platform.background()
        platform.drain()
        assertEquals(2, platform.enqueued.count { it == "background" })
        assertTrue(runBlocking { tern.awaitApplied(30.seconds) })
        // session_start + the event; the session stays open across quick background trips.
        assertEquals(2uL, tern.stats.queuedEvents)
    }

    @Test
    fun `network state at start, switches and loss reach the SDK`() {
        platform.network = NetworkState(active = null, hasInternet = false)
        val tern = start()
        platform.drain()
        assertEquals(false, tern.stats.networkAvailable, "offline at start")
        val cb = platform.networkCallbacks.single()
        cb.onAvailable("wifi")
        platform.drain()
        assertEquals(true, tern.stats.networkAvailable)
        // A switch: the new default first, then the old one lost — still online.
        cb.onAvailable("cell")
        cb.onLost("wifi")
        platform.drain()
        assertEquals(true, tern.stats.networkAvailable)
        cb.onCapabilitiesChanged("cell", hasInternet = false)
        platform.drain()
        assertEquals(false, tern.stats.networkAvailable)
        cb.onCapabilitiesChanged("cell", hasInternet = true)
        cb.onLost("cell")
        platform.drain()
        assertEquals(false, tern.stats.networkAvailable, "the default network was lost")
    }

    @Test
    fun `stop detaches everything and leaves held references safe`() {
        val tern = start()
        assertNotNull(runBlocking { process.awaitStarted(60.seconds) })
        platform.drain()
        val report = runBlocking { process.stop(30.seconds) }
        assertNotNull(report)
        platform.drain()
        assertEquals(0, platform.lifecycleObservers.size)
        assertEquals(0, platform.networkCallbacks.size)
        assertEquals(0, platform.localeObservers.size)
        assertEquals(1, platform.cancelled)
        // The old reference: every call returns, and is counted.
        tern.track("after stop")
        tern.identify("x")
        tern.onForeground()
        assertEquals("d", tern.configString("k", "d"))
        assertEquals(3uL, tern.stats.refusedAfterStop)
        assertEquals(TernState.STOPPED, tern.state)
        // A fresh instance for a later start; the stopped one never comes back.
        assertNotSame(tern, process.current)
        assertEquals(TernState.NOT_STARTED, process.current.state)
        assertNull(runBlocking { process.stop(1.seconds) }, "not started")
        val again = start()
        assertNotNull(runBlocking { process.awaitStarted(60.seconds) })
        assertTrue(runBlocking { again.awaitApplied(30.seconds) })
        assertEquals(0uL, again.stats.queuedEvents)
        assertEquals(emptyList<String>(), platform.violations.toList())
    }

    @Test
    fun `a second process on the same data directory logs once and is a counted no-op`() {
        assertNotNull(start().let { runBlocking { process.awaitStarted(60.seconds) } })
        val remote = TernProcess()
        val remotePlatform = FakePlatform(File(dir, "tern"), process = "dev.tern.test:remote")
        try {
            // Without the device context: its glue calls would be counted no-ops too.
            val tern = remote.start(remotePlatform, "demo", "demo-key", options.copy(deviceContext = false)) {
                autoLifecycle(false)
            }
            assertNull(runBlocking { remote.awaitStarted(60.seconds) }, "it did not open")
            assertEquals(TernState.UNAVAILABLE, tern.state)
            repeat(5) { tern.track("from remote") }
            val s = tern.stats
            assertEquals(5uL, s.refusedUnavailable)
            assertTrue(s.storeError!!.contains("in use"), s.storeError)
            val errors = remotePlatform.logs.filter { it.first == Priority.ERROR && "in use by another process" in it.second }
            assertEquals(1, errors.size, "${remotePlatform.logs}")
            assertTrue("dev.tern.test:remote" in errors.single().second)
            runBlocking { remote.stop(30.seconds) }
        } finally {
            remotePlatform.close()
        }
    }

    @Test
    fun `the flush job retries, succeeds when opted out, and ends at once when stopped`() = runBlocking {
        val noop: (String, Throwable) -> Unit = { what, e -> throw AssertionError(what, e) }
        // No relay: the store never empties, so a run asks for a retry.
        val tern = start()
        assertNotNull(process.awaitStarted(60.seconds))
        tern.track("waiting: no relay")
        assertEquals(FlushOutcome.RETRY, FlushJob.run(process, 200.milliseconds, attempt = 0, log = noop))
        assertEquals(
            FlushOutcome.SUCCESS,
            FlushJob.run(process, 200.milliseconds, attempt = FlushJob.MAX_ATTEMPTS - 1, log = noop),
            "the last attempt gives up quietly",
        )
        // WorkManager stops the worker: its coroutine is cancelled, the native wait ends.
        val run = launch(Dispatchers.IO) { FlushJob.run(process, Duration.INFINITE, attempt = 0, log = noop) }
        awaitTrue("the wait started") { tern.stats.flushWaits == 1uL }
        run.cancel()
        withTimeout(60.seconds) { run.join() }
        awaitTrue("the native wait ended") { tern.stats.flushWaits == 0uL }
        tern.optOut(true)
        assertEquals(FlushOutcome.SUCCESS, FlushJob.run(process, Duration.INFINITE, attempt = 0, log = noop))
    }

    @Test
    fun `the SDK's log lines reach the platform log at its level`() {
        val tern = start()
        assertNotNull(runBlocking { process.awaitStarted(60.seconds) })
        tern.track("") // refused: the first of its kind is a warning
        awaitTrue("a warning logged") {
            platform.logs.any { it.first == Priority.WARN && "call refused" in it.second && "track" in it.second }
        }
        assertEquals(Priority.ERROR, logcatPriority(dev.tern.LogLevel.ERROR))
        assertEquals(Priority.VERBOSE, logcatPriority(dev.tern.LogLevel.TRACE))
    }

    @Test
    fun `the device context at start, its changes and the lifecycle reach the SDK`() {
        platform.network = NetworkState(active = "wifi", hasInternet = true, type = dev.tern.ffi.TernNetworkType.WIFI)
        val tern = process.start(platform, "demo", "demo-key", options) {}
        assertNotNull(runBlocking { process.awaitStarted(60.seconds) })
        platform.drain()
        assertEquals(1, platform.localeObservers.size)
        val cb = platform.networkCallbacks.single()
        // A switch to cellular, then a locale and a time-zone change, then the network lost.
        cb.onAvailable("cell")
        cb.onCapabilitiesChanged("cell", hasInternet = true)
        cb.onTransport("cell", dev.tern.ffi.TernNetworkType.CELLULAR)
        cb.onTransport("wifi", dev.tern.ffi.TernNetworkType.WIFI) // not the default any more: ignored
        platform.drain()
        tern.track("on cellular")
        platform.changeLocale("fr-FR", "Europe/Paris")
        platform.drain()
        tern.track("in Paris")
        cb.onLost("cell")
        platform.drain()
        tern.track("offline")
        assertTrue(runBlocking { tern.awaitApplied(30.seconds) })
        // app_installed and app_opened (the glue turns lifecycle events on) + three events.
        assertEquals(5uL, tern.stats.queuedEvents)
        assertNotNull(tern.installId)
        assertEquals(emptyList<String>(), platform.violations.toList())
    }
}
