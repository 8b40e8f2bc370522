// The scenarios of the Kotlin test suites, written once and run twice: by the host-JVM
// JUnit 5 suite (bindings/kotlin/src/test, bindings/scripts/test-kotlin.sh) and by the
// Android instrumented suite (bindings/android/src/androidTest). The callers are thin: one
// test method per scenario. No test framework in here (host and device use different
// JUnit versions): a failed check throws AssertionError. No java.net.http either (not on
// Android): HTTP goes through HttpURLConnection.
package dev.tern

import dev.tern.ffi.DeviceContext
import dev.tern.ffi.ExposureOutcome
import dev.tern.ffi.FlagDecision
import dev.tern.ffi.TernException
import dev.tern.ffi.TernNetworkType
import java.io.File
import java.lang.ref.WeakReference
import java.net.HttpURLConnection
import java.net.URL
import java.util.Date
import java.util.concurrent.CopyOnWriteArrayList
import java.util.concurrent.CountDownLatch
import java.util.concurrent.TimeUnit
import kotlin.random.Random
import kotlin.time.Duration
import kotlin.time.Duration.Companion.milliseconds
import kotlin.time.Duration.Companion.minutes
import kotlin.time.Duration.Companion.seconds
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.async
import kotlinx.coroutines.delay
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import kotlinx.coroutines.withTimeoutOrNull

/** Where the live scenario finds the local stack (`tern-fleet stack`: stub + one relay). */
class LiveStack(
    /** Base URL of `tern-server-stub` as seen from the test process. */
    val stubUrl: String,
    /** The stack's shard map (JSON document, as relays serve it). */
    val shardMapJson: String,
    /** PEM of the relay's self-signed certificate. */
    val caPem: String,
) {
    companion object {
        /** Reads the `stack.env` file `tern-fleet stack` writes. */
        fun fromStackEnv(path: String): LiveStack {
            val env = File(path).readLines().filter { '=' in it }.associate {
                it.substringBefore('=') to it.substringAfter('=')
            }
            return LiveStack(
                stubUrl = env.getValue("TERN_STUB_URL"),
                shardMapJson = File(env.getValue("TERN_SHARD_MAP_FILE")).readText(),
                caPem = File(env.getValue("TERN_CA_FILE")).readText(),
            )
        }
    }
}

/**
 * Every scenario of the suites. [newDir] makes an empty data directory; [liveStack] says
 * where the local stack is, or throws (with a message saying how to provide it) when
 * there is none — the live scenario never passes without a stack.
 */
class Scenarios(private val newDir: () -> File, private val liveStack: () -> LiveStack) {
    // Lifecycle events off: the scenarios count the events they record themselves
    // (contextAndLifecycleEventsFollowTheApp turns them on).
    private fun config(dir: File = newDir()) = TernConfig.builder("demo", "demo-key", dir)
        .platform("android").appVersion("1.2.3").autoLifecycle(false).build()

    private fun <T> withTern(dir: File = newDir(), body: suspend (Tern) -> T): T = runBlocking {
        val tern = Tern.start(config(dir))
        try {
            body(tern)
        } finally {
            tern.shutdown()
            tern.close()
        }
    }

    fun recordsEveryKindOfCall(): Unit = withTern { t ->
        expect(Tern.version.isNotEmpty(), "version is empty")
        expect(FastTrack.available, "the native fast track path is not bound")
        t.track("app_open")
        // Names and keys are ASCII (docs/protocol.md §7); values carry any Unicode.
        t.track("unicode_values", mapOf("text" to "välue ✓ 🐦", "s" to 1.toShort(), "y" to 2.toByte()))
        t.track("viewed", mapOf("s" to "x", "i" to 3, "l" to 4L, "d" to 1.5, "f" to 2.5f, "b" to true))
        t.purchase("sku-1", 1_990_000, "EUR", 2, mapOf("coupon" to "X"))
        t.identify("user-42")
        t.setUserProperties(mapOf("plan" to "pro", "age" to 30), listOf("old"))
        t.startSession()
        expectNotNull(t.currentSession, "no session")
        t.onBackground()
        t.onForeground()
        t.setNetworkAvailable(false)
        t.setNetworkAvailable(true)
        t.messageImpression("welcome", "ok")
        t.endSession()
        t.flush()
        expect(t.awaitApplied(10.seconds), "not applied")
        val s = t.stats
        expect(s.journalReady, "journal not ready")
        expect(s.storeReady, "store not ready")
        equal("user-42", s.userId)
        expectNotNull(s.deviceId, "no device id")
        expect(s.queuedEvents >= 6u, "queued ${s.queuedEvents}")
        equal(0uL, s.droppedInvalid)
    }

    fun configAndFlagsHaveDefaultsBeforeAnyBundle(): Unit = withTern { t ->
        equal("dflt", t.configString("welcome_text", "dflt"))
        equal(7L, t.configLong("max_items", 7))
        equal(0.5, t.configDouble("discount", 0.5))
        equal(true, t.configBoolean("dark_mode", true))
        equal(null, t.configValue("welcome_text"))
        expect(t.configValues.isEmpty(), "values ${t.configValues}")
        equal(FlagDecision.Off, t.flag("new_checkout"))
        expect(!t.isEnabled("new_checkout"), "flag enabled")
        equal(0uL, t.configInfo.version)
        equal(null, t.configInfo.etag)
        t.refreshConfig() // no relay: nothing happens, nothing throws
    }

    fun invalidEventsAreTypedErrorsAndCounted(): Unit = withTern { t ->
        // The try forms throw the refusal ...
        val empty = throws<TernException.InvalidEvent> { t.tryTrack("") }
        equal("event name", empty.field)
        throws<TernException.InvalidEvent> { t.tryTrack("ok", mapOf("n" to Double.NaN)) }
        val list = throws<TernException.InvalidEvent> { t.tryTrack("ok", mapOf("x" to listOf(1))) }
        equal("property \"x\"", list.field)
        throws<TernException.InvalidEvent> { t.tryPurchase("sku", 100, "euro", 1) }
        val qty = throws<TernException.InvalidEvent> { t.tryPurchase("sku", 100, "EUR", -1) }
        equal("purchase quantity", qty.field)
        // ... the plain forms return normally; every refusal is counted.
        t.track("")
        t.track("dated", mapOf("when" to Date()))
        t.purchase("sku", 100, "EUR", -1)
        t.setUserProperties(mapOf("x" to Any()))
        equal(9uL, t.stats.droppedInvalid)
        equal(0uL, t.stats.eventsRecorded)
    }

    fun invalidConfigNamesTheField() {
        val e = throws<TernException.InvalidConfig> { Tern.startBlocking(TernConfig.builder("", "k", newDir()).build()) }
        equal("app_id", e.field)
        val key = throws<TernException.InvalidConfig> { Tern.startBlocking(TernConfig.builder("demo", "", newDir()).build()) }
        equal("app_key", key.field)
        val map = throws<TernException.InvalidConfig> {
            Tern.startBlocking(TernConfig.builder("demo", "k", newDir()).shardMapJson("{nope").build())
        }
        equal("shard_map_json", map.field)
        val ca = throws<TernException.InvalidConfig> {
            Tern.startBlocking(TernConfig.builder("demo", "k", newDir()).trustCertificate("not a pem", only = true).build())
        }
        expect(ca.field.contains("ca"), ca.field)
        val small = throws<TernException.InvalidConfig> {
            Tern.startBlocking(TernConfig.builder("demo", "k", newDir()).maxStoreBytes(10).build())
        }
        equal("store_limits.max_bytes", small.field)
        // The network settings reach the core, which names the one at fault.
        fun refused(field: String, set: TernConfig.Builder.() -> Unit) {
            val e = throws<TernException.InvalidConfig> {
                Tern.startBlocking(TernConfig.builder("demo", "k", newDir()).apply(set).build())
            }
            equal(field, e.field)
        }
        refused("local_address") { localAddress("127.1.0.300") }
        refused("upload.transport.connect_timeout") { connectTimeout(Duration.ZERO) }
        refused("upload.transport.request_timeout") { requestTimeout(11.minutes) }
        refused("upload.retry.base") { retryBackoff(Duration.ZERO) }
        refused("upload.router.quic_reprobe") { quicReprobe(Duration.INFINITE) }
        refused("apply_delay") { applyDelay(6.seconds) }
    }

    fun optOutRefusesEventsAndIsPersisted() {
        val dir = newDir()
        withTern(dir) { t ->
            t.optOut(true)
            expect(t.isOptedOut, "not opted out")
            throws<TernException.OptedOut> { t.tryTrack("x") }
            t.track("x")
            equal(2uL, t.stats.refusedOptedOut)
        }
        withTern(dir) { t ->
            expect(t.awaitApplied(10.seconds), "not applied")
            expect(t.isOptedOut, "opt-out not persisted")
            t.optOut(false)
            t.track("x")
        }
    }

    fun callsAfterShutdownAreCountedNoOpsAndShutdownIsIdempotent(): Unit = runBlocking {
        val t = Tern.start(config())
        t.track("before")
        val r = t.shutdown()
        expect(r.clean, "unclean shutdown")
        equal(1uL, r.queuedEvents)
        throws<TernException.ShutDown> { t.tryTrack("after") }
        // Every held reference stays safe: calls return, getters answer.
        t.track("after")
        t.identify("u")
        t.optOut(true)
        t.startSession()
        t.onForeground()
        t.onBackground()
        t.messageImpression("m", "ok")
        t.setNetworkAvailable(true)
        t.flush()
        equal("dflt", t.configString("k", "dflt"))
        equal(FlagDecision.Off, t.flag("f"))
        expect(!t.isOptedOut, "opted out after stop")
        expect(t.addConfigListener { }.isCancelled, "a listener added after stop is live")
        val s = t.stats
        equal(TernState.STOPPED, s.state)
        equal(8uL, s.refusedAfterStop)
        equal(1uL, s.queuedEvents)
        expect(t.shutdown().clean, "second shutdown unclean")
        expect(!t.flushAndWait(1.seconds), "flushAndWait after shutdown")
        t.close()
        t.track("after close")
        equal(9uL, t.stats.refusedAfterStop)
    }

    fun callsBeforeOpenAreKeptAndAppliedInOrder(): Unit = runBlocking {
        val t = Tern.create()
        equal(TernState.NOT_STARTED, t.state)
        t.identify("early")
        t.track("first", mapOf("i" to 1))
        val sub = t.addConfigListener { }
        t.purchase("sku", 1, "EUR")
        equal(3uL, t.stats.pendingCalls)
        equal("dflt", t.configString("k", "dflt"))
        t.open(config())
        equal(TernState.RUNNING, t.state)
        expect(t.awaitApplied(10.seconds), "not applied")
        val s = t.stats
        equal(2uL, s.queuedEvents)
        equal(2uL, s.eventsRecorded)
        equal("early", s.userId)
        equal(0uL, s.pendingCalls)
        expect(!sub.isCancelled, "listener dropped at open")
        t.shutdown()
    }

    fun recordingNeverThrowsInAnyState(): Unit = runBlocking {
        val errors = CopyOnWriteArrayList<String>()
        fun everyCall(t: Tern) {
            t.track("e", mapOf("d" to Date(), "n" to Double.NaN))
            t.track("")
            t.purchase("", -5, "x", -1, mapOf("l" to listOf(1)))
            t.identify("")
            t.setUserProperties(mapOf("" to 1), listOf(""))
            t.optOut(true)
            t.optOut(false)
            t.deleteLocalData()
            t.startSession()
            t.endSession()
            t.onForeground()
            t.onBackground()
            t.messageImpression("", "")
            t.setNetworkAvailable(false)
            t.flush()
            t.refreshConfig()
            t.stats
            t.configValues
            t.currentSession
        }
        val dir = newDir()
        val t = Tern.create()
        t.setErrorListener { call, e -> errors += "$call:${e::class.simpleName}" }
        everyCall(t) // not started
        t.open(config(dir))
        everyCall(t) // running
        t.optOut(true)
        everyCall(t) // opted out (everyCall opts back in half-way)
        val other = Tern.create()
        other.setErrorListener { call, e -> errors += "other $call:${e::class.simpleName}" }
        throws<TernException.DataDirInUse> { other.openBlocking(config(dir)) }
        everyCall(other) // unavailable
        t.shutdown()
        everyCall(t) // stopped
        expect(errors.any { it.endsWith("InvalidEvent") }, "$errors")
        expect(errors.any { it.endsWith("OptedOut") }, "$errors")
        expect(errors.any { it == "other open:DataDirInUse" }, "$errors")
        expect(errors.any { it == "other track:DataDirInUse" }, "$errors")
        expect(errors.any { it.endsWith("ShutDown") }, "$errors")
        expect(other.stats.refusedUnavailable >= 10u, "${other.stats}")
    }

    fun flushAndWaitIsCancellableAndAcceptsAnyDuration(): Unit = withTern { t ->
        t.track("waits: no relay")
        // A cancelled coroutine ends the native wait.
        val none = withTimeoutOrNull(300.milliseconds) { t.flushAndWait(Duration.INFINITE) }
        equal(null, none)
        awaitTrue("the cancelled wait's native thread ends") { t.stats.flushWaits == 0uL }
        // Out-of-range durations are clamped, never wrapped into a near-endless wait.
        expect(!t.flushAndWait((-5).seconds), "a negative timeout waited")
        expect(!t.flushAndWait(Duration.ZERO), "a zero timeout emptied the store")
        expect(t.awaitApplied(Duration.INFINITE), "awaitApplied(INFINITE)")
        t.awaitApplied((-1).seconds) // returns at once, whatever it finds
        equal(1uL, t.stats.queuedEvents)
    }

    fun errorListenerAndLogSinkReceiveRefusals(): Unit = withTern { t ->
        val errors = CopyOnWriteArrayList<Pair<String, TernException>>()
        val lines = CopyOnWriteArrayList<String>()
        t.setErrorListener { call, e -> errors += call to e }
        expect(Tern.installLogSink({ level, _, message -> lines += "$level $message" }, LogLevel.DEBUG), "sink not installed")
        try {
            equal(LogLevel.DEBUG, Tern.logLevel)
            t.track("")
            t.track("")
            t.optOut(true)
            t.track("x")
            equal(listOf("track", "track", "track"), errors.map { it.first })
            expect(errors[0].second is TernException.InvalidEvent, "${errors[0]}")
            expect(errors[2].second is TernException.OptedOut, "${errors[2]}")
            expect(lines.any { it.startsWith("WARN") && "call refused" in it && "track" in it }, "$lines")
            expect(lines.any { it.startsWith("DEBUG") && "call refused" in it }, "$lines")
            // A throwing listener is contained and counted.
            t.setErrorListener { _, _ -> throw IllegalStateException("listener bug") }
            t.track("y")
            equal(1uL, t.stats.errorListenerFailures)
            t.setErrorListener(null)
            t.track("z")
            equal(1uL, t.stats.errorListenerFailures)
            Tern.setLogLevel(LogLevel.OFF)
            val before = lines.size
            t.track("")
            equal(before, lines.size)
        } finally {
            Tern.setLogLevel(LogLevel.OFF)
        }
    }

    /**
     * Random sequences of public calls through the Kotlin layer — before open, invalid
     * input, opt-out, delete, sessions, stop — against a small model of what the SDK
     * accepts: no call throws, and every count matches (accepted events are all in the
     * store, refusals are counted by kind). Then threads racing each other and a stop:
     * nothing escapes, and every event the SDK accepted is in the store after a restart.
     */
    fun randomCallsNeverThrowAndLoseNothing() {
        // `deleteLocalData` resets the store's cumulative health counters (a new device)
        // when the store applies it, not in the call's order with the refusals around
        // it, so runs with deletes check the invalid count as an upper bound only.
        for (seed in listOf(1L, 2L, 3L, System.nanoTime())) modelRun(seed, deletes = seed % 2 == 1L)
        concurrentRun(System.nanoTime())
    }

    private fun modelRun(seed: Long, deletes: Boolean): Unit = runBlocking {
        val rnd = Random(seed)
        val dir = newDir()
        val t = Tern.create()
        val m = object {
            var opened = false
            var optedOut = false
            var open = false // a session is open
            var fg = false
            var queued = 0L
            var recorded = 0L
            var invalid = 0L
            var deleted = false
            var refusedOptedOut = 0L
        }
        fun accepted(events: Long) {
            if (!m.open && m.fg) {
                m.open = true
                m.queued++
                m.recorded++
            }
            m.queued += events
            m.recorded += events
        }
        // An event call the core validates: refused as opted out first, then as invalid.
        fun invalid() {
            m.invalid++
        }
        fun coreEvent(valid: Boolean) = when {
            m.optedOut -> m.refusedOptedOut++
            !valid -> invalid()
            else -> accepted(1)
        }
        fun session(events: Long, open: Boolean) {
            if (m.optedOut) return
            m.queued += events
            m.recorded += events
            m.open = open
        }
        val openAt = rnd.nextInt(0, 60)
        val log = StringBuilder()
        try {
            repeat(300) { i ->
                if (i == openAt) {
                    t.open(config(dir))
                    m.opened = true
                }
                when (rnd.nextInt(17)) {
                    0, 1, 2 -> { t.track("e$i", mapOf("i" to i, "s" to "x")); coreEvent(true); log.append("T") }
                    3 -> { t.track(""); coreEvent(false); log.append("t") }
                    4 -> { t.track("d", mapOf("when" to Date())); invalid(); log.append("D") }
                    5 -> { t.track("n", mapOf("n" to Double.NaN)); coreEvent(false); log.append("N") }
                    6 -> { t.purchase("sku", 1_000, "EUR", rnd.nextInt(1, 3)); coreEvent(true); log.append("P") }
                    7 -> { t.purchase("sku", 1_000, "EUR", -1); invalid(); log.append("p") }
                    8 -> { t.setUserProperties(mapOf("plan" to "pro"), listOf("old")); coreEvent(true); log.append("U") }
                    9 -> { t.identify(if (rnd.nextBoolean()) "user-${rnd.nextInt(3)}" else null); log.append("I") }
                    10 -> {
                        val out = rnd.nextInt(4) == 0
                        t.optOut(out)
                        m.optedOut = out
                        log.append(if (out) "O" else "o")
                    }
                    11 -> if (deletes && rnd.nextInt(4) == 0) {
                        t.deleteLocalData()
                        m.queued = 0
                        m.deleted = true
                        log.append("X")
                    }
                    12 -> { t.startSession(); session(if (m.open) 2 else 1, true); log.append("S") }
                    13 -> { t.endSession(); session(if (m.open) 1 else 0, false); log.append("s") }
                    14 -> {
                        t.onForeground()
                        if (!m.optedOut) {
                            m.fg = true
                            if (!m.open) session(1, true)
                        }
                        log.append("F")
                    }
                    15 -> { t.onBackground(); if (!m.optedOut) m.fg = false; log.append("B") }
                    else -> { t.messageImpression("m1", "ok"); coreEvent(true); log.append("M") }
                }
            }
            if (!m.opened) t.open(config(dir))
            expect(t.awaitApplied(30.seconds), "not applied")
            // The counters settle with the store's next step: poll, never sleep-and-hope.
            awaitTrue("counts match the model") {
                val s = t.stats
                val invalid = s.droppedInvalid.toLong()
                val invalidOk = if (m.deleted) invalid <= m.invalid else invalid == m.invalid
                s.queuedEvents.toLong() == m.queued && s.eventsRecorded.toLong() == m.recorded &&
                    invalidOk && s.refusedOptedOut.toLong() == m.refusedOptedOut
            }
            val r = t.shutdown()
            expect(r.clean, "unclean shutdown")
            var after = 0L
            repeat(rnd.nextInt(1, 20)) {
                t.track("late")
                after++
            }
            equal(after.toULong(), t.stats.refusedAfterStop)
        } catch (e: Throwable) {
            val s = t.stats
            throw AssertionError(
                "seed $seed, calls $log: model queued=${m.queued} recorded=${m.recorded} invalid=${m.invalid} " +
                    "optedOut=${m.refusedOptedOut}; stats queued=${s.queuedEvents} recorded=${s.eventsRecorded} " +
                    "invalid=${s.droppedInvalid} optedOut=${s.refusedOptedOut}",
                e,
            )
        }
    }

    private fun concurrentRun(seed: Long) {
        val dir = newDir()
        val t = Tern.startBlocking(config(dir))
        val threads = 4
        val go = CountDownLatch(1)
        val escaped = CopyOnWriteArrayList<Throwable>()
        val accepted = java.util.concurrent.atomic.AtomicLong()
        val workers = (0 until threads).map { n ->
            Thread {
                val rnd = Random(seed + n)
                go.await()
                try {
                    repeat(400) { i ->
                        when (rnd.nextInt(10)) {
                            // The try forms, so the threads know what the SDK accepted.
                            0, 1, 2, 3 -> try {
                                t.tryTrack("c", mapOf("n" to n, "i" to i)); accepted.incrementAndGet()
                            } catch (e: TernException) { }
                            4 -> try {
                                t.tryTrack(if (rnd.nextBoolean()) "" else "d", mapOf("d" to Date()))
                                throw AssertionError("an invalid event was accepted")
                            } catch (e: TernException) { }
                            5 -> try {
                                t.tryPurchase("sku", 5, "EUR", 1); accepted.incrementAndGet()
                            } catch (e: TernException) { }
                            6 -> t.optOut(rnd.nextInt(3) == 0)
                            7 -> t.identify("u$n")
                            8 -> { t.onBackground(); t.flush(); t.stats }
                            else -> { t.track("plain"); t.setUserProperties(mapOf("bad" to listOf(1))) }
                        }
                    }
                } catch (e: Throwable) {
                    escaped += e
                }
            }.also { it.start() }
        }
        go.countDown()
        Thread.sleep(Random(seed).nextLong(0, 50))
        val report = t.shutdownBlocking(30.seconds)
        workers.forEach { it.join() }
        expect(escaped.isEmpty(), "seed $seed: escaped $escaped")
        expect(report.clean, "unclean shutdown")
        val s = t.stats
        // Every event the store was handed is there, or was dropped because an opt-out
        // was recorded just before it, and counted.
        val again = Tern.startBlocking(config(dir))
        try {
            expect(runBlocking { again.awaitApplied(30.seconds) }, "not applied after restart")
            equal(s.eventsRecorded - s.droppedOptedOut, again.stats.queuedEvents)
            // The `plain` tracks were accepted too when not opted out: at least what the
            // threads saw accepted is recorded.
            expect(s.eventsRecorded.toLong() >= accepted.get(), "seed $seed: recorded ${s.eventsRecorded} < accepted ${accepted.get()}")
        } finally {
            again.shutdownBlocking()
        }
    }

    fun eightThreadsTrackingAtOnceLoseNothing(): Unit = withTern { t ->
        val threads = 8
        val each = 500
        val start = CountDownLatch(1)
        val errors = CopyOnWriteArrayList<Throwable>()
        val workers = (0 until threads).map { n ->
            Thread {
                start.await()
                try {
                    repeat(each) { i -> t.track("thread_event", mapOf("thread" to n, "i" to i)) }
                } catch (e: Throwable) {
                    errors += e
                }
            }.also { it.start() }
        }
        start.countDown()
        workers.forEach { it.join() }
        expect(errors.isEmpty(), "errors: $errors")
        expect(t.awaitApplied(30.seconds), "not applied")
        equal((threads * each).toULong(), t.stats.queuedEvents)
    }

    fun eventsSurviveShutdownAndRestart() {
        val dir = newDir()
        withTern(dir) { t -> repeat(100) { t.track("persisted", mapOf("i" to it)) } }
        withTern(dir) { t ->
            expect(t.awaitApplied(10.seconds), "not applied")
            equal(100uL, t.stats.queuedEvents)
            t.track("one_more")
            expect(t.awaitApplied(10.seconds), "not applied")
            equal(101uL, t.stats.queuedEvents)
        }
    }

    fun deleteLocalDataEmptiesTheQueueAndResetsTheDevice(): Unit = withTern { t ->
        repeat(10) { t.track("e") }
        expect(t.awaitApplied(10.seconds), "not applied")
        val before = t.stats.deviceId
        t.deleteLocalData()
        expect(t.awaitApplied(10.seconds), "not applied")
        equal(0uL, t.stats.queuedEvents)
        expect(before != t.stats.deviceId, "device id kept")
    }

    fun aliasAndResetChangeTheIdentityAndKeepTheDevice(): Unit = withTern { t ->
        t.startSession()
        repeat(3) { t.track("anonymous") }
        expect(t.awaitApplied(10.seconds), "not applied")
        val device = t.stats.deviceId
        val first = t.anonymousId
        expect(first != null, "no anonymous id once open")
        val queued = t.stats.queuedEvents
        // alias records one event (the link) and keeps the anonymous id.
        t.alias("alice")
        t.track("identified")
        expect(t.awaitApplied(10.seconds), "not applied")
        equal(queued + 2u, t.stats.queuedEvents)
        equal(first, t.anonymousId)
        // reset: a new anonymous id, the same device, the session ended (one event).
        expect(t.currentSession != null, "no session open")
        t.tryReset()
        expect(t.awaitApplied(10.seconds), "not applied")
        equal(null, t.currentSession)
        expect(t.anonymousId != first, "anonymous id kept by reset")
        equal(device, t.stats.deviceId)
        equal(queued + 3u, t.stats.queuedEvents)
        // An invalid user id is a typed refusal, and the non-throwing form does not throw.
        var refused = false
        try {
            t.tryAlias("")
        } catch (e: TernException) {
            refused = true
        }
        expect(refused, "empty user id accepted")
        t.alias("")
    }

    fun contextAndLifecycleEventsFollowTheApp(): Unit = runBlocking {
        val dir = newDir()
        fun cfg(version: String) = TernConfig.builder("demo", "demo-key", dir)
            .platform("android").appVersion(version)
            .context(DeviceContext(appBuild = "b$version", osName = "android", osVersion = "14",
                deviceModel = "Pixel 8", screenWidth = 1080u, screenHeight = 2400u,
                locale = "en-GB", timeZone = "Europe/London", networkType = TernNetworkType.WIFI))
            .build()
        val first = Tern.start(cfg("1.0"))
        // The install and the open are recorded by the SDK itself, then the app's event.
        first.track("hello")
        first.setNetworkType(TernNetworkType.CELLULAR)
        first.setNetworkType(TernNetworkType.CELLULAR)
        first.trySetLocale("fr-FR")
        first.setTimeZone("Europe/Paris")
        first.track("bonjour")
        expect(first.awaitApplied(10.seconds), "not applied")
        equal(4uL, first.stats.queuedEvents)
        val install = first.installId
        expect(install != null, "no install id once open")
        // Invalid values are typed refusals; the non-throwing forms do not throw.
        var refused = false
        try {
            first.trySetLocale("")
        } catch (e: TernException) {
            refused = true
        }
        expect(refused, "empty locale accepted")
        first.setTimeZone("")
        first.shutdown()
        first.close()
        // The same install, a new version: the update and an open, no second install.
        val second = Tern.start(cfg("1.1"))
        expect(second.awaitApplied(10.seconds), "not applied")
        equal(6uL, second.stats.queuedEvents)
        equal(install, second.installId)
        // Background and back: an open from the background (and the session it starts).
        second.onBackground()
        second.onForeground()
        expect(second.awaitApplied(10.seconds), "not applied")
        equal(8uL, second.stats.queuedEvents)
        second.shutdown()
        second.close()
        // Off: nothing but the app's own events.
        val quiet = Tern.start(TernConfig.builder("demo", "demo-key", newDir()).autoLifecycle(false).build())
        quiet.track("only")
        expect(quiet.awaitApplied(10.seconds), "not applied")
        equal(1uL, quiet.stats.queuedEvents)
        quiet.shutdown()
        quiet.close()
    }
    fun consentHoldsReleasesAndDeletionResetsTheDevice(): Unit = withTern { t ->
        expect(t.awaitApplied(10.seconds), "not applied")
        equal(ConsentState.GRANTED, t.consent(ConsentPurpose.ANALYTICS))
        val queued = t.stats.queuedEvents
        // Pending: recorded and kept, not queued for upload.
        t.setConsent(ConsentPurpose.ANALYTICS, ConsentState.PENDING)
        repeat(3) { t.track("held") }
        expect(t.awaitApplied(10.seconds), "not applied")
        equal(queued, t.stats.queuedEvents)
        equal(3uL, t.stats.consentPending)
        // Denied: the call succeeds, nothing is kept, it is counted.
        t.trySetConsent(ConsentPurpose.MESSAGING, ConsentState.DENIED)
        equal(ConsentState.DENIED, t.consent(ConsentPurpose.MESSAGING))
        t.messageImpression("m1", "shown")
        equal(1uL, t.stats.refusedConsent)
        // Granted: the held events join the queue.
        t.setConsent(ConsentPurpose.ANALYTICS, ConsentState.GRANTED)
        expect(t.awaitApplied(10.seconds), "not applied")
        equal(queued + 3u, t.stats.queuedEvents)
        equal(0uL, t.stats.consentPending)
        // A deletion request: local data gone, a new device id, the request counted.
        val device = t.stats.deviceId
        t.tryRequestDeletion()
        expect(t.awaitApplied(10.seconds), "not applied")
        equal(0uL, t.stats.queuedEvents)
        expect(device != t.stats.deviceId, "device id kept")
        equal(1uL, t.stats.deletionRequests)
        // The consent decisions outlive the deletion.
        equal(ConsentState.DENIED, t.consent(ConsentPurpose.MESSAGING))
    }
    fun pushTokensAndPushEventsAreRecorded(): Unit = withTern { t ->
        expect(t.awaitApplied(10.seconds), "not applied")
        val queued = t.stats.queuedEvents
        // A token records one event; the same token again records nothing.
        t.setPushToken("fcm-token:1")
        t.trySetPushToken("fcm-token:1")
        t.pushReceived("spring")
        t.tryPushOpened("spring", "buy")
        expect(t.awaitApplied(10.seconds), "not applied")
        equal(queued + 3u, t.stats.queuedEvents)
        // A new user: the token is recorded again, under the user.
        t.identify("alice")
        expect(t.awaitApplied(10.seconds), "not applied")
        equal(queued + 4u, t.stats.queuedEvents)
        // Refusals are typed; the non-throwing forms do not throw.
        for (bad in listOf<() -> Unit>(
            { t.trySetPushToken("has space") },
            { t.trySetPushToken("abcd", PushProvider.APNS, null) },
            { t.tryPushReceived("") },
        )) {
            var refused = false
            try {
                bad()
            } catch (e: TernException) {
                refused = true
            }
            expect(refused, "accepted")
        }
        t.setPushToken("has space")
        t.pushOpened("")
    }

    fun listenerHandlesCancelAndClose(): Unit = withTern { t ->
        val sub = t.addConfigListener { }
        expect(!sub.isCancelled, "cancelled at once")
        sub.cancel()
        expect(sub.isCancelled, "not cancelled")
        sub.cancel()
        sub.close()
        val msgs = t.addMessageListener { }
        msgs.close()
    }

    fun flushAndWaitWithoutARelayTimesOutAndKeepsTheEvents(): Unit = withTern { t ->
        expect(t.flushAndWait(5.seconds), "an empty store is flushed at once")
        repeat(5) { t.track("waiting") }
        expect(!t.flushAndWait(300.milliseconds), "nothing can upload, yet flushAndWait said done")
        equal(5uL, t.stats.queuedEvents)
    }

    fun aSecondInstanceOnTheSameDirectoryGetsDataDirInUse() {
        val dir = newDir()
        withTern(dir) { first ->
            val e = throws<TernException.DataDirInUse> { Tern.startBlocking(config(dir)) }
            equal(dir.path, e.path)
            val second = Tern.create()
            throws<TernException.DataDirInUse> { second.openBlocking(config(dir)) }
            equal(TernState.UNAVAILABLE, second.state)
            second.track("x")
            throws<TernException.DataDirInUse> { second.tryTrack("x") }
            equal(2uL, second.stats.refusedUnavailable)
            expect(second.stats.storeError!!.contains("in use"), "${second.stats.storeError}")
            first.track("still fine")
            expect(first.awaitApplied(10.seconds), "not applied")
            equal(1uL, first.stats.queuedEvents)
            second.close()
        }
    }

    /**
     * The live round trip through the local stack: the first config bundle (values and a
     * variant flag), 50 events seen by the stub's `/verify/summary`, `flushAndWait`, and a
     * config change made through the stub's admin API observed by a listener and by the
     * `configChanges` Flow while a throwing listener is contained and counted.
     */
    fun liveRoundTripDeliversEventsAndObservesAConfigChange(): Unit = runBlocking {
        val stack = liveStack()
        val stub = stack.stubUrl
        val cfg = TernConfig.builder("demo", "demo-key", newDir())
            .autoLifecycle(false)
            .shardMapJson(stack.shardMapJson)
            .trustCertificate(stack.caPem, only = true)
            .maxBatchEvents(20)
            .maxBatchAge(1.seconds)
            .build()
        val t = Tern.start(cfg)
        try {
            val before = eventsUnique(stub)
            // The first bundle may arrive before any listener is registered: wait on state.
            val firstDeadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(60)
            while (t.configInfo.version == 0uL && System.nanoTime() < firstDeadline) Thread.sleep(50)
            expect(t.configInfo.version > 0u, "no config bundle within 60 s")
            equal("Hello", t.configString("welcome_text", "dflt"))
            equal(20L, t.configLong("max_items", 0))
            expect(t.flag("button_color") is FlagDecision.Variant, "flag ${t.flag("button_color")}")

            // Events reach the backend; flushAndWait reports the store emptied.
            repeat(50) { t.track("kotlin_live", mapOf("i" to it)) }
            expect(t.flushAndWait(60.seconds), "store not emptied within 60 s: ${t.stats}")
            val deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(60)
            while (eventsUnique(stub) < before + 50 && System.nanoTime() < deadline) Thread.sleep(100)
            expect(eventsUnique(stub) >= before + 50, "stub saw ${eventsUnique(stub) - before} of 50")

            val seen = CountDownLatch(1)
            val changes = CopyOnWriteArrayList<ConfigChange>()
            val bad = t.addConfigListener { throw IllegalStateException("listener bug") }
            // A listener whose handle the app let go: it stays until shutdown, even
            // after the handle is garbage-collected.
            val unheld = CountDownLatch(1)
            val handle = WeakReference(t.addConfigListener { c -> if ("welcome_text" in c.changedValues) unheld.countDown() })
            awaitTrue("the dropped handle is collected") {
                System.gc()
                handle.get() == null
            }
            val good = t.addConfigListener { c ->
                changes += c
                if ("welcome_text" in c.changedValues) seen.countDown()
            }
            val value = "Bonjour ${System.nanoTime()}"
            val viaFlow = async(Dispatchers.IO) {
                withTimeout(60_000) { t.configChanges.first { "welcome_text" in it.changedValues } }
            }
            delay(300) // let the collector register its listener
            equal(200, put("$stub/admin/apps/demo/values/welcome_text", "\"$value\""))
            expect(seen.await(60, TimeUnit.SECONDS), "no change notice; got $changes")
            expect(unheld.await(60, TimeUnit.SECONDS), "the listener of a collected handle was removed")
            equal(value, t.configString("welcome_text", "dflt"))
            equal(value, t.configValue("welcome_text"))
            expect("welcome_text" in viaFlow.await().changedValues, "flow missed the change")
            expect(t.stats.listenerPanics >= 1u, "listener panics ${t.stats.listenerPanics}")
            expect(t.stats.eventsAcked >= 50u, "acked ${t.stats.eventsAcked}")
            bad.close()
            good.close()
        } finally {
            t.shutdown()
            t.close()
        }
    }

    /**
     * Experiment exposures through the local stack: flag reads record one exposure per flag,
     * variant and config version for this device, `tryRecordExposure` says it was recorded
     * already, and after a restart on the same directory (automatic exposures off) nothing is
     * recorded again; the stub holds exactly one exposure event per key.
     */
    fun exposuresAreRecordedOncePerFlagVariantAndVersion(): Unit = runBlocking {
        val stack = liveStack()
        val stub = stack.stubUrl
        val dir = newDir()
        fun cfg(auto: Boolean) = TernConfig.builder("demo", "demo-key", dir)
            .autoLifecycle(false)
            .shardMapJson(stack.shardMapJson)
            .trustCertificate(stack.caPem, only = true)
            .maxBatchEvents(20)
            .maxBatchAge(1.seconds)
            .autoExposures(auto)
            .build()
        suspend fun awaitBundle(t: Tern) {
            val deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(60)
            while (t.configInfo.version == 0uL && System.nanoTime() < deadline) delay(50)
            expect(t.configInfo.version > 0u, "no config bundle within 60 s")
        }
        fun name(d: FlagDecision) = when (d) {
            is FlagDecision.Variant -> d.key
            FlagDecision.On -> "on"
            FlagDecision.Off -> "off"
        }
        val t = Tern.start(cfg(auto = true))
        val version: ULong
        val device: String
        val color: String
        try {
            awaitBundle(t)
            version = t.configInfo.version
            device = expectNotNull(t.stats.deviceId, "no device id")
            color = name(t.flag("button_color"))
            repeat(3) {
                equal(color, name(t.flag("button_color")))
                t.isEnabled("new_checkout")
            }
            equal(ExposureOutcome.ALREADY_RECORDED, t.tryRecordExposure("button_color"))
            equal(ExposureOutcome.NO_FLAG, t.tryRecordExposure("no_such_flag"))
            t.recordExposure("button_color") // the non-throwing form
            equal(2uL, t.stats.exposuresRecorded)
            equal(0uL, t.stats.exposuresFailed)
            expect(t.flushAndWait(60.seconds), "store not emptied within 60 s: ${t.stats}")
        } finally {
            t.shutdown()
            t.close()
        }
        val again = Tern.start(cfg(auto = false))
        try {
            awaitBundle(again)
            equal(version, again.configInfo.version)
            equal(color, name(again.flag("button_color")))
            equal(ExposureOutcome.ALREADY_RECORDED, again.tryRecordExposure("button_color"))
            equal(ExposureOutcome.ALREADY_RECORDED, again.tryRecordExposure("new_checkout"))
            equal(0uL, again.stats.exposuresRecorded)
        } finally {
            again.shutdown()
            again.close()
        }
        val url = "$stub/verify/apps/demo/exposures?unit=$device"
        awaitTrue("the stub stores the device's 2 exposures") { count(get(url), "exposures") == 2L }
        val view = get(url)
        equal(2L, count(view, "exposure_events"))
        equal(0L, count(view, "duplicated"))
        expect("\"flag\":\"button_color\",\"variant\":\"$color\"" in view, "button_color row: $view")
        expect("\"config_version\":$version," in view, "version $version: $view")
    }

    private fun count(json: String, field: String): Long =
        Regex("\"$field\"\\s*:\\s*(\\d+)").find(json)?.groupValues?.get(1)?.toLong() ?: -1

    private fun eventsUnique(stub: String): Long =
        Regex("\"events_unique\"\\s*:\\s*(\\d+)").find(get("$stub/verify/summary"))!!.groupValues[1].toLong()

    private fun get(url: String): String {
        val c = URL(url).openConnection() as HttpURLConnection
        try {
            return c.inputStream.bufferedReader().readText()
        } finally {
            c.disconnect()
        }
    }

    private fun put(url: String, json: String): Int {
        val c = URL(url).openConnection() as HttpURLConnection
        try {
            c.requestMethod = "PUT"
            c.doOutput = true
            c.setRequestProperty("content-type", "application/json")
            c.outputStream.use { it.write(json.toByteArray()) }
            return c.responseCode
        } finally {
            c.disconnect()
        }
    }
}

/** Polls [condition] until it holds, for at most 60 s (the machine may be loaded). */
private fun awaitTrue(what: String, condition: () -> Boolean) {
    val deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(60)
    while (!condition()) {
        if (System.nanoTime() > deadline) throw AssertionError("not within 60 s: $what")
        Thread.sleep(10)
    }
}

private fun equal(expected: Any?, actual: Any?) {
    if (expected != actual) throw AssertionError("expected <$expected>, got <$actual>")
}

private fun expect(condition: Boolean, message: String) {
    if (!condition) throw AssertionError(message)
}

private fun <T : Any> expectNotNull(value: T?, message: String): T = value ?: throw AssertionError(message)

private inline fun <reified E : Throwable> throws(block: () -> Unit): E {
    try {
        block()
    } catch (e: Throwable) {
        if (e is E) return e
        throw AssertionError("expected ${E::class.simpleName}, got $e", e)
    }
    throw AssertionError("expected ${E::class.simpleName}, nothing was thrown")
}
