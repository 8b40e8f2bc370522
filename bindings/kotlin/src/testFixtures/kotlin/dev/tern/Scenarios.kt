// The scenarios of the Kotlin test suites, written once and run twice: by the host-JVM
// JUnit 5 suite (bindings/kotlin/src/test, bindings/scripts/test-kotlin.sh) and by the
// Android instrumented suite (bindings/android/src/androidTest). The callers are thin: one
// test method per scenario. No test framework in here (host and device use different
// JUnit versions): a failed check throws AssertionError. No java.net.http either (not on
// Android): HTTP goes through HttpURLConnection.
package dev.tern

import dev.tern.ffi.FlagDecision
import dev.tern.ffi.TernException
import java.io.File
import java.net.HttpURLConnection
import java.net.URL
import java.util.concurrent.CopyOnWriteArrayList
import java.util.concurrent.CountDownLatch
import java.util.concurrent.TimeUnit
import kotlin.time.Duration.Companion.milliseconds
import kotlin.time.Duration.Companion.seconds
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.async
import kotlinx.coroutines.delay
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout

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
    private fun config(dir: File = newDir()) = TernConfig.builder("demo", "demo-key", dir)
        .platform("android").appVersion("1.2.3").build()

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
        t.track("app_open")
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
        expect(s.queuedEvents >= 5u, "queued ${s.queuedEvents}")
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
        val empty = throws<TernException.InvalidEvent> { t.track("") }
        equal("event name", empty.field)
        throws<TernException.InvalidEvent> { t.track("ok", mapOf("n" to Double.NaN)) }
        throws<TernException.InvalidEvent> { t.track("ok", mapOf("x" to listOf(1))) }
        throws<TernException.InvalidEvent> { t.purchase("sku", 100, "euro", 1) }
        throws<TernException.InvalidEvent> { t.purchase("sku", 100, "EUR", -1) }
        expect(t.stats.droppedInvalid >= 2u, "dropped ${t.stats.droppedInvalid}")
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
    }

    fun optOutRefusesEventsAndIsPersisted() {
        val dir = newDir()
        withTern(dir) { t ->
            t.optOut(true)
            expect(t.isOptedOut, "not opted out")
            throws<TernException.OptedOut> { t.track("x") }
        }
        withTern(dir) { t ->
            expect(t.awaitApplied(10.seconds), "not applied")
            expect(t.isOptedOut, "opt-out not persisted")
            t.optOut(false)
            t.track("x")
        }
    }

    fun callsAfterShutdownFailAndShutdownIsIdempotent(): Unit = runBlocking {
        val t = Tern.start(config())
        t.track("before")
        val r = t.shutdown()
        expect(r.clean, "unclean shutdown")
        equal(1uL, r.queuedEvents)
        throws<TernException.ShutDown> { t.track("after") }
        expect(t.shutdown().clean, "second shutdown unclean")
        expect(!t.flushAndWait(1.seconds), "flushAndWait after shutdown")
        t.close()
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

    fun aSecondInstanceOnTheSameDirectoryReportsTheLock() {
        val dir = newDir()
        withTern(dir) { first ->
            expect(first.awaitApplied(10.seconds), "not applied")
            val second = Tern.start(config(dir))
            try {
                val deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(10)
                while (second.stats.storeError == null && System.nanoTime() < deadline) Thread.sleep(20)
                val err = expectNotNull(second.stats.storeError, "no store error")
                expect(err.contains("in use"), err)
                throws<TernException> { second.track("x") }
            } finally {
                second.close()
            }
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
