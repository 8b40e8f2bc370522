// Host-JVM tests of the Kotlin API (generated bindings + dev.tern wrapper) against the
// real native library. The live round trip needs the local stack started by
// bindings/scripts/test-kotlin.sh (TERN_STACK_ENV names its stack.env).
package dev.tern

import dev.tern.ffi.FlagDecision
import dev.tern.ffi.TernException
import java.io.File
import java.net.URI
import java.net.http.HttpClient
import java.net.http.HttpRequest
import java.net.http.HttpResponse
import java.nio.file.Files
import java.util.concurrent.CopyOnWriteArrayList
import java.util.concurrent.CountDownLatch
import java.util.concurrent.TimeUnit
import kotlin.time.Duration.Companion.seconds
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.async
import kotlinx.coroutines.delay
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertNotNull
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test

class TernTest {
    private fun tempDir(): File = Files.createTempDirectory("tern-kt").toFile().also { it.deleteOnExit() }

    private fun config(dir: File = tempDir()) = TernConfig.builder("demo", "demo-key", dir)
        .platform("android").appVersion("1.2.3").build()

    private fun <T> withTern(dir: File = tempDir(), body: suspend (Tern) -> T): T = runBlocking {
        val tern = Tern.start(config(dir))
        try {
            body(tern)
        } finally {
            tern.shutdown()
            tern.close()
        }
    }

    @Test
    fun `records every kind of call and counts them`() = withTern { t ->
        assertTrue(Tern.version.isNotEmpty())
        t.track("app_open")
        t.track("viewed", mapOf("s" to "x", "i" to 3, "l" to 4L, "d" to 1.5, "f" to 2.5f, "b" to true))
        t.purchase("sku-1", 1_990_000, "EUR", 2, mapOf("coupon" to "X"))
        t.identify("user-42")
        t.setUserProperties(mapOf("plan" to "pro", "age" to 30), listOf("old"))
        t.startSession()
        assertNotNull(t.currentSession)
        t.onBackground()
        t.onForeground()
        t.setNetworkAvailable(false)
        t.setNetworkAvailable(true)
        t.messageImpression("welcome", "ok")
        t.endSession()
        t.flush()
        assertTrue(t.awaitApplied(10.seconds))
        val s = t.stats
        assertTrue(s.journalReady)
        assertTrue(s.storeReady)
        assertEquals("user-42", s.userId)
        assertNotNull(s.deviceId)
        assertTrue(s.queuedEvents >= 5u, "queued ${s.queuedEvents}")
        assertEquals(0uL, s.droppedInvalid)
    }

    @Test
    fun `config and flags have defaults before any bundle`() = withTern { t ->
        assertEquals("dflt", t.configString("welcome_text", "dflt"))
        assertEquals(7L, t.configLong("max_items", 7))
        assertEquals(0.5, t.configDouble("discount", 0.5))
        assertEquals(true, t.configBoolean("dark_mode", true))
        assertNull(t.configValue("welcome_text"))
        assertTrue(t.configValues.isEmpty())
        assertEquals(FlagDecision.Off, t.flag("new_checkout"))
        assertFalse(t.isEnabled("new_checkout"))
        assertEquals(0uL, t.configInfo.version)
        assertNull(t.configInfo.etag)
        t.refreshConfig() // no relay: nothing happens, nothing throws
    }

    @Test
    fun `invalid events are typed errors and counted`() = withTern { t ->
        val empty = assertThrows(TernException.InvalidEvent::class.java) { t.track("") }
        assertEquals("event name", empty.field)
        assertThrows(TernException.InvalidEvent::class.java) { t.track("ok", mapOf("n" to Double.NaN)) }
        assertThrows(TernException.InvalidEvent::class.java) { t.track("ok", mapOf("x" to listOf(1))) }
        assertThrows(TernException.InvalidEvent::class.java) { t.purchase("sku", 100, "euro", 1) }
        assertThrows(TernException.InvalidEvent::class.java) { t.purchase("sku", 100, "EUR", -1) }
        assertTrue(t.stats.droppedInvalid >= 2u)
    }

    @Test
    fun `invalid config names the field`() {
        val e = assertThrows(TernException.InvalidConfig::class.java) {
            Tern.startBlocking(TernConfig.builder("", "k", tempDir()).build())
        }
        assertEquals("app_id", e.field)
        val key = assertThrows(TernException.InvalidConfig::class.java) {
            Tern.startBlocking(TernConfig.builder("demo", "", tempDir()).build())
        }
        assertEquals("app_key", key.field)
        val map = assertThrows(TernException.InvalidConfig::class.java) {
            Tern.startBlocking(TernConfig.builder("demo", "k", tempDir()).shardMapJson("{nope").build())
        }
        assertEquals("shard_map_json", map.field)
        val ca = assertThrows(TernException.InvalidConfig::class.java) {
            Tern.startBlocking(TernConfig.builder("demo", "k", tempDir()).trustCertificate("not a pem", only = true).build())
        }
        assertTrue(ca.field.contains("ca"), ca.field)
        val small = assertThrows(TernException.InvalidConfig::class.java) {
            Tern.startBlocking(TernConfig.builder("demo", "k", tempDir()).maxStoreBytes(10).build())
        }
        assertEquals("store_limits.max_bytes", small.field)
    }

    @Test
    fun `opt out refuses events and is persisted`() {
        val dir = tempDir()
        withTern(dir) { t ->
            t.optOut(true)
            assertTrue(t.isOptedOut)
            assertThrows(TernException.OptedOut::class.java) { t.track("x") }
        }
        withTern(dir) { t ->
            assertTrue(t.awaitApplied(10.seconds))
            assertTrue(t.isOptedOut)
            t.optOut(false)
            t.track("x")
        }
    }

    @Test
    fun `calls after shutdown fail with ShutDown and shutdown is idempotent`() = runBlocking {
        val t = Tern.start(config())
        t.track("before")
        val r = t.shutdown()
        assertTrue(r.clean)
        assertEquals(1uL, r.queuedEvents)
        assertThrows(TernException.ShutDown::class.java) { t.track("after") }
        assertTrue(t.shutdown().clean)
        t.close()
    }

    @Test
    fun `eight threads tracking at once lose nothing`() = withTern { t ->
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
        assertTrue(errors.isEmpty(), "errors: $errors")
        assertTrue(t.awaitApplied(30.seconds))
        assertEquals((threads * each).toULong(), t.stats.queuedEvents)
    }

    @Test
    fun `events survive shutdown and restart`() {
        val dir = tempDir()
        withTern(dir) { t -> repeat(100) { t.track("persisted", mapOf("i" to it)) } }
        withTern(dir) { t ->
            assertTrue(t.awaitApplied(10.seconds))
            assertEquals(100uL, t.stats.queuedEvents)
            t.track("one_more")
            assertTrue(t.awaitApplied(10.seconds))
            assertEquals(101uL, t.stats.queuedEvents)
        }
    }

    @Test
    fun `delete local data empties the queue and resets the device`() = withTern { t ->
        repeat(10) { t.track("e") }
        assertTrue(t.awaitApplied(10.seconds))
        val before = t.stats.deviceId
        t.deleteLocalData()
        assertTrue(t.awaitApplied(10.seconds))
        assertEquals(0uL, t.stats.queuedEvents)
        assertTrue(before != t.stats.deviceId)
    }

    @Test
    fun `listener handles cancel and close`() = withTern { t ->
        val sub = t.addConfigListener { }
        assertFalse(sub.isCancelled)
        sub.cancel()
        assertTrue(sub.isCancelled)
        sub.cancel()
        sub.close()
        val msgs = t.addMessageListener { }
        msgs.close()
    }

    @Test
    fun `a second instance on the same directory reports the lock`() {
        val dir = tempDir()
        withTern(dir) { first ->
            assertTrue(first.awaitApplied(10.seconds))
            val second = Tern.start(config(dir))
            try {
                val deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(10)
                while (second.stats.storeError == null && System.nanoTime() < deadline) Thread.sleep(20)
                val err = second.stats.storeError
                assertNotNull(err)
                assertTrue(err!!.contains("in use"), err)
                assertThrows(TernException::class.java) { second.track("x") }
            } finally {
                second.close()
            }
        }
    }

    // ---- live round trip through the local stack (stub + relay) ----

    private fun stackEnv(): Map<String, String> {
        val path = System.getenv("TERN_STACK_ENV")
            ?: throw AssertionError("TERN_STACK_ENV is not set: run bindings/scripts/test-kotlin.sh")
        return File(path).readLines().filter { '=' in it }.associate {
            it.substringBefore('=') to it.substringAfter('=')
        }
    }

    private val http = HttpClient.newHttpClient()

    private fun get(url: String): String =
        http.send(HttpRequest.newBuilder(URI(url)).GET().build(), HttpResponse.BodyHandlers.ofString()).body()

    private fun put(url: String, json: String): Int = http.send(
        HttpRequest.newBuilder(URI(url)).PUT(HttpRequest.BodyPublishers.ofString(json))
            .header("content-type", "application/json").build(),
        HttpResponse.BodyHandlers.ofString(),
    ).statusCode()

    private fun eventsUnique(stub: String): Long =
        Regex("\"events_unique\"\\s*:\\s*(\\d+)").find(get("$stub/verify/summary"))!!.groupValues[1].toLong()

    @Test
    fun `live round trip delivers events and observes a config change`() = runBlocking {
        val env = stackEnv()
        val stub = env.getValue("TERN_STUB_URL")
        val cfg = TernConfig.builder("demo", "demo-key", tempDir())
            .shardMapJson(File(env.getValue("TERN_SHARD_MAP_FILE")).readText())
            .trustCertificate(File(env.getValue("TERN_CA_FILE")).readText(), only = true)
            .maxBatchEvents(20)
            .maxBatchAge(1.seconds)
            .build()
        val t = Tern.start(cfg)
        try {
            val before = eventsUnique(stub)
            // Config: the first bundle arrives from the relay (it may arrive before any
            // listener is registered, so wait on the state, not on a notice).
            val firstDeadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(60)
            while (t.configInfo.version == 0uL && System.nanoTime() < firstDeadline) Thread.sleep(50)
            assertTrue(t.configInfo.version > 0u, "no config bundle within 60 s")
            assertEquals("Hello", t.configString("welcome_text", "dflt"))
            assertEquals(20L, t.configLong("max_items", 0))
            assertTrue(t.flag("button_color") is FlagDecision.Variant)

            // Events reach the backend.
            repeat(50) { t.track("kotlin_live", mapOf("i" to it)) }
            t.flush()
            val deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(60)
            while (eventsUnique(stub) < before + 50 && System.nanoTime() < deadline) Thread.sleep(100)
            assertTrue(eventsUnique(stub) >= before + 50, "stub saw ${eventsUnique(stub) - before} of 50")

            // A config change made through the stub's admin API reaches the listeners; a
            // throwing listener is contained and counted, the others still hear it.
            val seen = CountDownLatch(1)
            val changes = CopyOnWriteArrayList<ConfigChange>()
            val bad = t.addConfigListener { throw IllegalStateException("listener bug") }
            val good = t.addConfigListener { c ->
                changes += c
                if ("welcome_text" in c.changedValues) seen.countDown()
            }
            val value = "Bonjour ${System.nanoTime()}"
            // The same change through the Flow API, collected on another thread.
            val viaFlow = async(Dispatchers.IO) {
                withTimeout(60_000) { t.configChanges.first { "welcome_text" in it.changedValues } }
            }
            delay(300) // let the collector register its listener
            assertEquals(200, put("$stub/admin/apps/demo/values/welcome_text", "\"$value\""))
            assertTrue(seen.await(60, TimeUnit.SECONDS), "no change notice; got $changes")
            assertEquals(value, t.configString("welcome_text", "dflt"))
            assertEquals(value, t.configValue("welcome_text"))
            assertTrue("welcome_text" in viaFlow.await().changedValues)
            assertTrue(t.stats.listenerPanics >= 1u, "listener panics ${t.stats.listenerPanics}")
            assertTrue(t.stats.eventsAcked >= 50u)
            bad.close()
            good.close()
        } finally {
            t.shutdown()
            t.close()
        }
    }
}
