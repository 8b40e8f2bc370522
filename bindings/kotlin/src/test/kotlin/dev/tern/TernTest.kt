// Host-JVM tests of the Kotlin API (generated bindings + dev.tern layer) against the real
// native library: thin JUnit 5 callers of the shared scenarios
// (bindings/kotlin/src/testFixtures/kotlin/dev/tern/Scenarios.kt), which the Android
// instrumented suite (bindings/android/src/androidTest) runs too. The live round trip
// needs the local stack started by bindings/scripts/test-kotlin.sh (TERN_STACK_ENV names
// its stack.env); without it the test fails.
package dev.tern

import java.io.File
import java.nio.file.Files
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

    @Test fun `listener handles cancel and close`() = scenarios.listenerHandlesCancelAndClose()

    @Test fun `flushAndWait without a relay times out and keeps the events`() =
        scenarios.flushAndWaitWithoutARelayTimesOutAndKeepsTheEvents()

    @Test fun `a second instance on the same directory gets DataDirInUse`() =
        scenarios.aSecondInstanceOnTheSameDirectoryGetsDataDirInUse()

    @Test fun `live round trip delivers events and observes a config change`() =
        scenarios.liveRoundTripDeliversEventsAndObservesAConfigChange()
}
