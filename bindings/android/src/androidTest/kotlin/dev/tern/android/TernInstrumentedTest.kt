// The shared scenarios (bindings/kotlin/src/testFixtures/kotlin/dev/tern/Scenarios.kt) on
// an emulator or device: the same code the host-JVM suite runs, here against the
// libtern_bindings.so of the device's ABI.
//
// The live round trip needs a local stack reachable from the device; pass it as
// instrumentation arguments (see bindings/README.md, "Android instrumented tests"):
//   -e ternStubUrl http://127.0.0.1:<stub port>
//   -e ternShardMapB64 <base64 of shard_map.json>  -e ternCaB64 <base64 of cert.pem>
// Without them that one test is reported as skipped by a failed assumption that names
// the missing arguments — it never passes without a stack.
package dev.tern.android

import android.util.Base64
import androidx.test.ext.junit.runners.AndroidJUnit4
import androidx.test.platform.app.InstrumentationRegistry
import dev.tern.LiveStack
import dev.tern.Scenarios
import java.io.File
import java.util.UUID
import org.junit.Assume.assumeTrue
import org.junit.Test
import org.junit.runner.RunWith

@RunWith(AndroidJUnit4::class)
class TernInstrumentedTest {
    private val context = InstrumentationRegistry.getInstrumentation().targetContext
    private val args = InstrumentationRegistry.getArguments()

    private val scenarios = Scenarios(
        newDir = { File(context.cacheDir, "tern-test-${UUID.randomUUID()}").also { it.mkdirs() } },
        liveStack = {
            val missing = LIVE_ARGS.filter { args.getString(it).isNullOrEmpty() }
            assumeTrue("live round trip needs instrumentation arguments $missing (see bindings/README.md)", missing.isEmpty())
            LiveStack(
                stubUrl = args.getString("ternStubUrl")!!,
                shardMapJson = String(Base64.decode(args.getString("ternShardMapB64"), Base64.DEFAULT)),
                caPem = String(Base64.decode(args.getString("ternCaB64"), Base64.DEFAULT)),
            )
        },
    )

    @Test fun recordsEveryKindOfCall() = scenarios.recordsEveryKindOfCall()

    @Test fun configAndFlagsHaveDefaultsBeforeAnyBundle() = scenarios.configAndFlagsHaveDefaultsBeforeAnyBundle()

    @Test fun invalidEventsAreTypedErrorsAndCounted() = scenarios.invalidEventsAreTypedErrorsAndCounted()

    @Test fun invalidConfigNamesTheField() = scenarios.invalidConfigNamesTheField()

    @Test fun optOutRefusesEventsAndIsPersisted() = scenarios.optOutRefusesEventsAndIsPersisted()

    @Test fun callsAfterShutdownAreCountedNoOpsAndShutdownIsIdempotent() =
        scenarios.callsAfterShutdownAreCountedNoOpsAndShutdownIsIdempotent()

    @Test fun callsBeforeOpenAreKeptAndAppliedInOrder() = scenarios.callsBeforeOpenAreKeptAndAppliedInOrder()

    @Test fun recordingNeverThrowsInAnyState() = scenarios.recordingNeverThrowsInAnyState()

    @Test fun flushAndWaitIsCancellableAndAcceptsAnyDuration() = scenarios.flushAndWaitIsCancellableAndAcceptsAnyDuration()

    @Test fun errorListenerAndLogSinkReceiveRefusals() = scenarios.errorListenerAndLogSinkReceiveRefusals()

    @Test fun randomCallsNeverThrowAndLoseNothing() = scenarios.randomCallsNeverThrowAndLoseNothing()

    @Test fun eightThreadsTrackingAtOnceLoseNothing() = scenarios.eightThreadsTrackingAtOnceLoseNothing()

    @Test fun eventsSurviveShutdownAndRestart() = scenarios.eventsSurviveShutdownAndRestart()

    @Test fun deleteLocalDataEmptiesTheQueueAndResetsTheDevice() = scenarios.deleteLocalDataEmptiesTheQueueAndResetsTheDevice()
    @Test fun aliasAndResetChangeTheIdentityAndKeepTheDevice() = scenarios.aliasAndResetChangeTheIdentityAndKeepTheDevice()
    @Test fun contextAndLifecycleEventsFollowTheApp() = scenarios.contextAndLifecycleEventsFollowTheApp()
    @Test fun consentHoldsReleasesAndDeletionResetsTheDevice() = scenarios.consentHoldsReleasesAndDeletionResetsTheDevice()
    @Test fun pushTokensAndPushEventsAreRecorded() = scenarios.pushTokensAndPushEventsAreRecorded()

    @Test fun listenerHandlesCancelAndClose() = scenarios.listenerHandlesCancelAndClose()

    @Test fun flushAndWaitWithoutARelayTimesOutAndKeepsTheEvents() =
        scenarios.flushAndWaitWithoutARelayTimesOutAndKeepsTheEvents()

    @Test fun aSecondInstanceOnTheSameDirectoryGetsDataDirInUse() = scenarios.aSecondInstanceOnTheSameDirectoryGetsDataDirInUse()

    @Test fun liveRoundTripDeliversEventsAndObservesAConfigChange() =
        scenarios.liveRoundTripDeliversEventsAndObservesAConfigChange()

    @Test fun exposuresAreRecordedOncePerFlagVariantAndVersion() =
        scenarios.exposuresAreRecordedOncePerFlagVariantAndVersion()

    private companion object {
        val LIVE_ARGS = listOf("ternStubUrl", "ternShardMapB64", "ternCaB64")
    }
}
