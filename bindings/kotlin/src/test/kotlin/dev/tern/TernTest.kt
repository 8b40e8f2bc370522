// Host-JVM tests of the Kotlin API (generated bindings + dev.tern layer) against the real
// native library: thin JUnit 5 callers of the shared scenarios
// (bindings/kotlin/src/testFixtures/kotlin/dev/tern/Scenarios.kt), which the Android
// instrumented suite (bindings/android/src/androidTest) runs too, plus host-only checks
// (the network settings the fleet's Kotlin pod uses, read back from /proc). The live
// round trip needs the local stack started by bindings/scripts/test-kotlin.sh
// (TERN_STACK_ENV names its stack.env); without it the test fails.
package dev.tern

import dev.tern.ffi.TernException
import java.io.File
import java.nio.file.Files
import kotlin.random.Random
import kotlin.time.Duration
import kotlin.time.Duration.Companion.milliseconds
import kotlin.time.Duration.Companion.minutes
import kotlin.time.Duration.Companion.seconds
import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test

class TernTest {
    private val scenarios = Scenarios(
        newDir = { Files.createTempDirectory("tern-kt").toFile().also(File::deleteOnExit) },
        liveStack = {
            val path = System.getenv("TERN_STACK_ENV")
                ?: throw AssertionError("TERN_STACK_ENV is not set: run bindings/scripts/test-kotlin.sh")
            LiveStack.fromStackEnv(path)
        },
    )

    @Test fun `records every kind of call and counts them`() = scenarios.recordsEveryKindOfCall()

    @Test fun `config and flags have defaults before any bundle`() = scenarios.configAndFlagsHaveDefaultsBeforeAnyBundle()

    @Test fun `exposures are recorded once per flag variant and version and reach the stub`() =
        scenarios.exposuresAreRecordedOncePerFlagVariantAndVersion()

    @Test fun `invalid events are typed errors and counted`() = scenarios.invalidEventsAreTypedErrorsAndCounted()

    @Test fun `invalid config names the field`() = scenarios.invalidConfigNamesTheField()

    @Test fun `opt out refuses events and is persisted`() = scenarios.optOutRefusesEventsAndIsPersisted()

    @Test fun `calls after shutdown are counted no-ops and shutdown is idempotent`() =
        scenarios.callsAfterShutdownAreCountedNoOpsAndShutdownIsIdempotent()

    @Test fun `calls before open are kept and applied in order`() = scenarios.callsBeforeOpenAreKeptAndAppliedInOrder()

    @Test fun `recording never throws in any state`() = scenarios.recordingNeverThrowsInAnyState()

    @Test fun `flushAndWait is cancellable and accepts any duration`() =
        scenarios.flushAndWaitIsCancellableAndAcceptsAnyDuration()

    @Test fun `error listener and log sink receive refusals`() = scenarios.errorListenerAndLogSinkReceiveRefusals()

    @Test fun `random calls never throw and lose nothing`() = scenarios.randomCallsNeverThrowAndLoseNothing()

    @Test fun `eight threads tracking at once lose nothing`() = scenarios.eightThreadsTrackingAtOnceLoseNothing()

    @Test fun `events survive shutdown and restart`() = scenarios.eventsSurviveShutdownAndRestart()

    @Test fun `delete local data empties the queue and resets the device`() =
        scenarios.deleteLocalDataEmptiesTheQueueAndResetsTheDevice()

    @Test fun `alias and reset change the identity and keep the device`() =
        scenarios.aliasAndResetChangeTheIdentityAndKeepTheDevice()

    @Test fun `context and lifecycle events follow the app`() =
        scenarios.contextAndLifecycleEventsFollowTheApp()

    @Test fun `consent holds and releases events and a deletion request resets the device`() =
        scenarios.consentHoldsReleasesAndDeletionResetsTheDevice()

    @Test fun `push tokens and push events are recorded`() = scenarios.pushTokensAndPushEventsAreRecorded()

    @Test fun `listener handles cancel and close`() = scenarios.listenerHandlesCancelAndClose()

    @Test fun `flushAndWait without a relay times out and keeps the events`() =
        scenarios.flushAndWaitWithoutARelayTimesOutAndKeepsTheEvents()

    @Test fun `a second instance on the same directory gets DataDirInUse`() =
        scenarios.aSecondInstanceOnTheSameDirectoryGetsDataDirInUse()

    @Test fun `live round trip delivers events and observes a config change`() =
        scenarios.liveRoundTripDeliversEventsAndObservesAConfigChange()

    @Test fun `network settings reach the core and a refused one leaves recording non-throwing`() {
        fun builder() = TernConfig.builder("demo", "demo-key", Files.createTempDirectory("tern-kt").toFile())
            .relay("r1", "127.0.0.1:9", "https://127.0.0.1:9")
        // Refused at start, naming the field; the instance is then a counted no-op.
        val refused = Tern.create()
        val calls = mutableListOf<String>()
        refused.setErrorListener { call, _ -> synchronized(calls) { calls += call } }
        val e = assertThrows(TernException.InvalidConfig::class.java) {
            refused.openBlocking(builder().localAddress("localhost").build())
        }
        assertEquals("local_address", e.field)
        refused.track("x")
        refused.identify("u")
        assertEquals(TernState.UNAVAILABLE, refused.state)
        assertEquals(2uL, refused.stats.refusedUnavailable)
        assertEquals(listOf("open", "track", "identify"), synchronized(calls) { calls.toList() })

        // Accepted: the uploader's QUIC socket is bound to the local address given.
        val address = listOf(127, 3, Random.nextInt(1, 255), Random.nextInt(1, 255))
        val t = Tern.startBlocking(
            builder().connectTimeout(1.seconds).requestTimeout(5.seconds).retryBackoff(200.milliseconds)
                .quicReprobe(5.minutes).applyDelay(Duration.ZERO).localAddress(address.joinToString("."))
                .build(),
        )
        try {
            assertEquals(TernState.RUNNING, t.state)
            t.track("x")
            assertTrue(runBlocking { t.awaitApplied(10.seconds) }, "not applied")
            // /proc/net/udp writes an IPv4 address as the hex of its bytes in host (little-endian) order.
            val hex = address.reversed().joinToString("") { "%02X".format(it) } + ":"
            val deadline = System.nanoTime() + 30_000_000_000
            fun bound() = File("/proc/net/udp").readLines()
                .any { it.trim().split(Regex("\\s+")).getOrNull(1)?.startsWith(hex) == true }
            while (!bound()) {
                assertTrue(System.nanoTime() < deadline, "no UDP socket bound to ${address.joinToString(".")} within 30 s")
                Thread.sleep(20)
            }
        } finally {
            t.shutdownBlocking()
            t.close()
        }
    }
}
