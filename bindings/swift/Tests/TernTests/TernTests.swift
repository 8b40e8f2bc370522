// XCTest suite mirroring the shared Kotlin scenarios
// (bindings/kotlin/src/testFixtures/kotlin/dev/tern/Scenarios.kt: one test per scenario,
// same names; the random-sequence property test stays Kotlin-only) plus what only the
// Swift layer does (cancellation of one task's wait, duration clamping, the platform)
// and a start with every network setting. The Apple glue is in TernGlueTests.swift and
// TernRefreshTests.swift. Runs on macOS CI with the XCFramework built by
// bindings/scripts/build-ios.sh; it cannot be compiled on the Linux build machine
// (bindings/scripts/swift_symbols.py checks its references to the layer).
// The live round trip needs TERN_STACK_ENV (the stack.env of `tern-fleet stack`), as in
// the Kotlin suite; without it it fails.
import Foundation
import os
import XCTest
@testable import Tern
import TernFFI

/// A thread-safe list, for what callbacks report from SDK threads.
final class Recorder<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var items: [T] = []
    func append(_ item: T) { lock.lock(); items.append(item); lock.unlock() }
    var all: [T] { lock.lock(); defer { lock.unlock() }; return items }
}

/// A type the SDK does not record, made a property value to test the refusal.
extension Date: TernPropertyValue {}

/// Waits (polling, up to `timeout` seconds) until `condition` holds, on the main actor
/// (conditions may read main-actor fakes).
@MainActor
func waitUntil(_ what: String, timeout: TimeInterval = 30, file: StaticString = #filePath, line: UInt = #line,
               _ condition: () -> Bool) async {
    let end = Date().addingTimeInterval(timeout)
    while !condition() {
        if Date() > end { return XCTFail("timed out waiting for \(what)", file: file, line: line) }
        try? await Task.sleep(nanoseconds: 20_000_000)
    }
}

final class TernTests: XCTestCase {
    private func tempDir() -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("tern-swift-\(UUID().uuidString)")
        try? FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }

    private func config(_ dir: URL? = nil) -> TernConfiguration {
        // Lifecycle events off: the tests count the events they record themselves
        // (testContextAndLifecycleEventsFollowTheApp turns them on).
        TernConfiguration(appId: "demo", appKey: "demo-key", dataDirectory: dir ?? tempDir()).appVersion("1.2.3")
            .autoLifecycle(false)
    }

    func testRecordsEveryKindOfCall() async throws {
        let t = try await Tern.start(config())
        XCTAssertFalse(Tern.version.isEmpty)
        XCTAssertEqual(t.state, .running)
        t.track("app_open")
        t.track("viewed", properties: ["s": "x", "i": 3, "d": 1.5, "b": true, "i8": Int8(-1), "u32": UInt32(7), "f": Float(0.5)])
        t.purchase(productId: "sku-1", amountMicros: 1_990_000, currency: "EUR", quantity: 2)
        t.identify("user-42")
        t.setUserProperties(["plan": "pro"], unset: ["old"])
        t.startSession()
        XCTAssertNotNil(t.currentSession)
        t.didEnterBackground()
        t.didEnterForeground()
        t.setNetworkAvailable(false)
        t.setNetworkAvailable(true)
        t.messageImpression(messageId: "welcome", action: "ok")
        t.endSession()
        t.flush()
        let applied = await t.awaitApplied(timeout: 10)
        XCTAssertTrue(applied)
        let s = t.stats()
        XCTAssertEqual(s.userId, "user-42")
        XCTAssertGreaterThanOrEqual(s.queuedEvents, 5)
        XCTAssertEqual(s.droppedInvalid, 0)
        await t.shutdown()
    }

    func testConfigAndFlagsHaveDefaultsBeforeAnyBundle() async throws {
        let t = try await Tern.start(config())
        XCTAssertEqual(t.string("welcome_text", default: "dflt"), "dflt")
        XCTAssertEqual(t.int("max_items", default: 7), 7)
        XCTAssertEqual(t.double("ratio", default: 0.5), 0.5)
        XCTAssertTrue(t.bool("on", default: true))
        XCTAssertNil(t.configValue("missing"))
        XCTAssertEqual(t.flag("new_checkout"), .off)
        XCTAssertFalse(t.isEnabled("new_checkout"))
        XCTAssertEqual(t.configInfo.version, 0)
        await t.shutdown()
    }

    func testExposuresNeedABundleAndRefuseAfterShutdown() async throws {
        let t = try await Tern.start(config().autoExposures(true))
        XCTAssertEqual(t.flag("new_checkout"), .off)
        XCTAssertEqual(try t.tryRecordExposure("new_checkout"), .noFlag)
        t.recordExposure("new_checkout")
        XCTAssertEqual(t.stats().exposuresRecorded, 0)
        await t.shutdown()
        XCTAssertThrowsError(try t.tryRecordExposure("new_checkout")) { XCTAssertEqual($0 as? TernError, .ShutDown) }
        t.recordExposure("new_checkout")
    }

    /// The local stack's settings (`TERN_STACK_ENV`, written by `tern-fleet stack`).
    private func stackEnv() throws -> [String: String] {
        let envPath = try XCTUnwrap(
            ProcessInfo.processInfo.environment["TERN_STACK_ENV"],
            "TERN_STACK_ENV is not set: start `tern-fleet stack` first")
        var env: [String: String] = [:]
        for line in try String(contentsOfFile: envPath).split(separator: "\n") {
            let parts = line.split(separator: "=", maxSplits: 1).map(String.init)
            if parts.count == 2 { env[parts[0]] = parts[1] }
        }
        return env
    }

    /// Flag reads record one exposure per flag, variant and config version; a restart on
    /// the same directory (automatic exposures off) records none again; the stub holds
    /// exactly one exposure event per key.
    func testLiveExposuresAreRecordedOncePerFlagVariantAndVersion() async throws {
        let env = try stackEnv()
        let stub = try XCTUnwrap(env["TERN_STUB_URL"])
        let dir = tempDir()
        func cfg(_ auto: Bool) throws -> TernConfiguration {
            config(dir)
                .shardMapJSON(try String(contentsOfFile: try XCTUnwrap(env["TERN_SHARD_MAP_FILE"])))
                .trustCertificate(pem: try String(contentsOfFile: try XCTUnwrap(env["TERN_CA_FILE"])), only: true)
                .maxBatchEvents(20)
                .maxBatchAge(1)
                .autoExposures(auto)
        }
        func awaitBundle(_ t: Tern) async throws {
            var waited = 0
            while t.configInfo.version == 0 && waited < 1200 {
                try await Task.sleep(nanoseconds: 50_000_000)
                waited += 1
            }
            XCTAssertGreaterThan(t.configInfo.version, 0, "no config bundle within 60 s")
        }
        let t = try await Tern.start(try cfg(true))
        try await awaitBundle(t)
        let version = t.configInfo.version
        let device = try XCTUnwrap(t.stats().deviceId)
        let color = t.flag("button_color")
        for _ in 0..<3 {
            XCTAssertEqual(t.flag("button_color"), color)
            _ = t.isEnabled("new_checkout")
        }
        XCTAssertEqual(try t.tryRecordExposure("button_color"), .alreadyRecorded)
        XCTAssertEqual(try t.tryRecordExposure("no_such_flag"), .noFlag)
        XCTAssertEqual(t.stats().exposuresRecorded, 2)
        let uploaded = await t.flushAndWait(timeout: 60)
        XCTAssertTrue(uploaded, "store not emptied within 60 s")
        await t.shutdown()

        let again = try await Tern.start(try cfg(false))
        try await awaitBundle(again)
        XCTAssertEqual(again.configInfo.version, version)
        XCTAssertEqual(again.flag("button_color"), color)
        XCTAssertEqual(try again.tryRecordExposure("button_color"), .alreadyRecorded)
        XCTAssertEqual(try again.tryRecordExposure("new_checkout"), .alreadyRecorded)
        XCTAssertEqual(again.stats().exposuresRecorded, 0)
        await again.shutdown()

        let url = try XCTUnwrap(URL(string: "\(stub)/verify/apps/demo/exposures?unit=\(device)"))
        var view: [String: Any] = [:]
        for _ in 0..<600 {
            let (data, _) = try await URLSession.shared.data(from: url)
            view = try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [String: Any])
            if view["exposures"] as? Int == 2 { break }
            try await Task.sleep(nanoseconds: 100_000_000)
        }
        XCTAssertEqual(view["exposures"] as? Int, 2)
        XCTAssertEqual(view["exposure_events"] as? Int, 2)
        XCTAssertEqual(view["duplicated"] as? Int, 0)
    }

    func testInvalidEventsAreTypedErrorsAndCounted() async throws {
        let t = try await Tern.start(config())
        XCTAssertThrowsError(try t.tryTrack("")) { error in
            guard case TernError.InvalidEvent(let field, _) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(field, "event name")
        }
        XCTAssertThrowsError(try t.tryTrack("ok", properties: ["n": Double.nan]))
        XCTAssertThrowsError(try t.tryPurchase(productId: "sku", amountMicros: 100, currency: "euro"))
        // A type the SDK does not record is refused by the core, naming the property.
        XCTAssertThrowsError(try t.tryTrack("dated", properties: ["when": Date()])) { error in
            guard case TernError.InvalidEvent(let field, _) = error else { return XCTFail("\(error)") }
            XCTAssertTrue(field.contains("when"), field)
        }
        // The same refusals without `try` return normally and are counted.
        t.track("")
        t.track("dated", properties: ["when": Date()])
        XCTAssertEqual(t.stats().droppedInvalid, 6)
        XCTAssertEqual(t.stats().eventsRecorded, 0)
        await t.shutdown()
    }

    private func expectInvalidConfig(_ config: TernConfiguration, field: String,
                                     file: StaticString = #filePath, line: UInt = #line) async {
        do {
            let t = try await Tern.start(config)
            await t.shutdown()
            XCTFail("expected InvalidConfig(\(field))", file: file, line: line)
        } catch TernError.InvalidConfig(let f, _) {
            XCTAssertEqual(f, field, file: file, line: line)
        } catch {
            XCTFail("\(error)", file: file, line: line)
        }
    }

    func testInvalidConfigNamesTheField() async {
        await expectInvalidConfig(TernConfiguration(appId: "", appKey: "k", dataDirectory: tempDir()), field: "app_id")
        await expectInvalidConfig(TernConfiguration(appId: "demo", appKey: "", dataDirectory: tempDir()), field: "app_key")
        await expectInvalidConfig(TernConfiguration(appId: "demo", appKey: "k", dataDirectory: tempDir()).shardMapJSON("{nope"),
                                  field: "shard_map_json")
        await expectInvalidConfig(TernConfiguration(appId: "demo", appKey: "k", dataDirectory: tempDir()).maxStoreBytes(10),
                                  field: "store_limits.max_bytes")
        // The network settings reach the core, which names the one at fault.
        let base = { TernConfiguration(appId: "demo", appKey: "k", dataDirectory: self.tempDir()) }
        await expectInvalidConfig(base().localAddress("127.1.0.300"), field: "local_address")
        await expectInvalidConfig(base().connectTimeout(0), field: "upload.transport.connect_timeout")
        await expectInvalidConfig(base().requestTimeout(11 * 60), field: "upload.transport.request_timeout")
        await expectInvalidConfig(base().retryBackoff(-1), field: "upload.retry.base")
        await expectInvalidConfig(base().quicReprobe(.infinity), field: "upload.router.quic_reprobe")
        await expectInvalidConfig(base().applyDelay(6), field: "apply_delay")
        do {
            _ = try await Tern.start(TernConfiguration(appId: "demo", appKey: "k", dataDirectory: tempDir())
                .trustCertificate(pem: "not a pem", only: true))
            XCTFail("expected InvalidConfig for the CA")
        } catch TernError.InvalidConfig(let field, _) {
            XCTAssertTrue(field.contains("ca"), field)
        } catch {
            XCTFail("\(error)")
        }
    }

    func testNetworkSettingsWithinTheirBoundsStart() async throws {
        let t = try await Tern.start(config()
            .relay(id: "r1", quicAddr: "127.0.0.1:9", httpsURL: "https://127.0.0.1:9")
            .connectTimeout(1).requestTimeout(5).retryBackoff(0.2).quicReprobe(300).applyDelay(0)
            .localAddress("127.0.0.1"))
        XCTAssertEqual(t.state, .running)
        t.track("x")
        XCTAssertGreaterThanOrEqual(t.stats().eventsRecorded, 1)
        XCTAssertEqual(t.stats().droppedInvalid, 0)
        await t.shutdown()
    }

    func testOptOutRefusesEventsAndIsPersisted() async throws {
        let dir = tempDir()
        let t = try await Tern.start(config(dir))
        t.optOut(true)
        XCTAssertTrue(t.isOptedOut)
        XCTAssertThrowsError(try t.tryTrack("x")) { XCTAssertEqual($0 as? TernError, .OptedOut) }
        t.track("x")
        XCTAssertEqual(t.stats().refusedOptedOut, 2)
        await t.shutdown()
        let again = try await Tern.start(config(dir))
        _ = await again.awaitApplied(timeout: 10)
        XCTAssertTrue(again.isOptedOut)
        again.optOut(false)
        again.track("x")
        await again.shutdown()
    }

    func testCallsAfterShutdownAreCountedNoOpsAndShutdownIsIdempotent() async throws {
        let t = try await Tern.start(config())
        t.track("before")
        let report = await t.shutdown()
        XCTAssertTrue(report.clean)
        XCTAssertEqual(report.queuedEvents, 1)
        XCTAssertThrowsError(try t.tryTrack("after")) { XCTAssertEqual($0 as? TernError, .ShutDown) }
        // Every held reference stays safe: calls return, getters answer.
        t.track("after")
        t.identify("u")
        t.optOut(true)
        t.startSession()
        t.didEnterForeground()
        t.didEnterBackground()
        t.messageImpression(messageId: "m", action: "ok")
        t.setNetworkAvailable(true)
        t.flush()
        XCTAssertEqual(t.string("k", default: "dflt"), "dflt")
        XCTAssertEqual(t.flag("f"), .off)
        XCTAssertFalse(t.isOptedOut)
        XCTAssertTrue(t.onConfigChange { _ in }.isCancelled, "a listener added after stop is live")
        let s = t.stats()
        XCTAssertEqual(s.state, .stopped)
        XCTAssertEqual(s.refusedAfterStop, 8)
        XCTAssertEqual(s.queuedEvents, 1)
        let second = await t.shutdown()
        XCTAssertTrue(second.clean)
        let flushed = await t.flushAndWait(timeout: 1)
        XCTAssertFalse(flushed)
    }

    func testCallsBeforeOpenAreKeptAndAppliedInOrder() async throws {
        let t = Tern()
        XCTAssertEqual(t.state, .notStarted)
        t.identify("early")
        t.track("first", properties: ["i": 1])
        let sub = t.onConfigChange { _ in }
        t.purchase(productId: "sku", amountMicros: 1, currency: "EUR")
        XCTAssertEqual(t.stats().pendingCalls, 3)
        XCTAssertEqual(t.string("k", default: "dflt"), "dflt")
        try await t.open(config())
        XCTAssertEqual(t.state, .running)
        let applied = await t.awaitApplied(timeout: 10)
        XCTAssertTrue(applied)
        let s = t.stats()
        XCTAssertEqual(s.queuedEvents, 2)
        XCTAssertEqual(s.eventsRecorded, 2)
        XCTAssertEqual(s.userId, "early")
        XCTAssertEqual(s.pendingCalls, 0)
        XCTAssertFalse(sub.isCancelled, "listener dropped at open")
        await t.shutdown()
    }

    /// Calls every recording call, with bad input too. None of them can throw (their
    /// signatures say so); what they refuse is counted and reported.
    private func everyCall(_ t: Tern) {
        t.track("e", properties: ["d": Date(), "n": Double.nan])
        t.track("")
        t.purchase(productId: "", amountMicros: -5, currency: "x", quantity: 0, properties: ["l": Date()])
        t.identify("")
        t.setUserProperties(["": 1], unset: [""])
        t.optOut(true)
        t.optOut(false)
        t.deleteLocalData()
        t.startSession()
        t.endSession()
        t.didEnterForeground()
        t.didEnterBackground()
        t.messageImpression(messageId: "", action: "")
        t.setNetworkAvailable(false)
        t.flush()
        t.refreshConfig()
        _ = t.stats()
        _ = t.currentSession
        _ = t.configValue("k")
    }

    func testRecordingNeverThrowsInAnyState() async throws {
        let errors = Recorder<String>()
        let dir = tempDir()
        let t = Tern()
        t.setErrorHandler { call, error in errors.append("\(call):\(error)") }
        everyCall(t) // not started
        try await t.open(config(dir))
        everyCall(t) // running
        t.optOut(true)
        everyCall(t) // opted out (everyCall opts back in half-way)
        let other = Tern()
        other.setErrorHandler { call, error in errors.append("other \(call):\(error)") }
        do {
            try await other.open(config(dir))
            XCTFail("a second instance opened the same directory")
        } catch TernError.DataDirInUse {
        }
        everyCall(other) // unavailable
        await t.shutdown()
        everyCall(t) // stopped
        let all = errors.all
        XCTAssertTrue(all.contains { $0.contains("InvalidEvent") }, "\(all)")
        XCTAssertTrue(all.contains { $0.contains("OptedOut") }, "\(all)")
        XCTAssertTrue(all.contains { $0.hasPrefix("other open:") && $0.contains("DataDirInUse") }, "\(all)")
        XCTAssertTrue(all.contains { $0.hasPrefix("other track:") && $0.contains("DataDirInUse") }, "\(all)")
        XCTAssertTrue(all.contains { $0.contains("ShutDown") }, "\(all)")
        XCTAssertGreaterThanOrEqual(other.stats().refusedUnavailable, 10)
        XCTAssertEqual(other.stats().state, .unavailable)
        XCTAssertGreaterThan(t.stats().refusedAfterStop, 0)
    }

    func testFlushAndWaitIsCancellableAndAcceptsAnyDuration() async throws {
        let t = try await Tern.start(config())
        t.track("waits: no relay")
        // A cancelled task ends the native wait: with no deadline, only the cancellation
        // can end it (the test would hang otherwise).
        let waiting = Task { await t.flushAndWait(timeout: .infinity) }
        await waitUntil("the wait to start") { t.stats().flushWaits == 1 }
        waiting.cancel()
        let emptied = await waiting.value
        XCTAssertFalse(emptied)
        await waitUntil("the cancelled wait's native thread to end") { t.stats().flushWaits == 0 }
        // A task cancelled before it waits does not start a wait.
        let early = Task { () -> Bool in
            withUnsafeCurrentTask { $0?.cancel() }
            return await t.flushAndWait(timeout: .infinity)
        }
        let earlyEmptied = await early.value
        XCTAssertFalse(earlyEmptied)
        // Out-of-range durations are clamped, never trapped on or wrapped.
        let negative = await t.flushAndWait(timeout: -5)
        XCTAssertFalse(negative, "a negative timeout waited")
        let zero = await t.flushAndWait(timeout: 0)
        XCTAssertFalse(zero, "a zero timeout emptied the store")
        let nan = Task { await t.flushAndWait(timeout: .nan) }
        await waitUntil("the NaN wait to start") { t.stats().flushWaits == 1 }
        nan.cancel()
        let nanEmptied = await nan.value
        XCTAssertFalse(nanEmptied)
        let applied = await t.awaitApplied(timeout: .infinity)
        XCTAssertTrue(applied)
        _ = await t.awaitApplied(timeout: -1) // returns at once, whatever it finds
        XCTAssertEqual(t.stats().queuedEvents, 1)
        await t.shutdown()
    }

    /// The core ends every wait of an instance at once; a wait that another task's
    /// cancellation ended starts again, so it still reports the store emptying.
    func testCancellingOneFlushWaitLeavesTheOthersWaiting() async throws {
        let t = try await Tern.start(config())
        for _ in 0..<3 { t.track("queued: no relay") }
        _ = await t.awaitApplied(timeout: 10)
        let kept = Task { await t.flushAndWait(timeout: .infinity) }
        let cancelled = Task { await t.flushAndWait(timeout: .infinity) }
        await waitUntil("both waits to start") { t.stats().flushWaits == 2 }
        cancelled.cancel()
        let cancelledEmptied = await cancelled.value
        XCTAssertFalse(cancelledEmptied)
        // Empty the store: the remaining wait sees it (it would have returned `false`
        // already, had the other task's cancellation ended it for good).
        t.deleteLocalData()
        let keptEmptied = await kept.value
        XCTAssertTrue(keptEmptied)
        XCTAssertEqual(t.stats().queuedEvents, 0)
        await t.shutdown()
    }

    // Mirrors Scenarios.aliasAndResetChangeTheIdentityAndKeepTheDevice.
    func testAliasAndResetChangeTheIdentityAndKeepTheDevice() async throws {
        let t = try await Tern.start(config())
        t.startSession()
        for _ in 0..<3 { t.track("anonymous") }
        var applied = await t.awaitApplied(timeout: 10)
        XCTAssertTrue(applied)
        let device = t.stats().deviceId
        let first = t.anonymousId
        XCTAssertNotNil(first)
        let queued = t.stats().queuedEvents
        t.alias("alice")
        t.track("identified")
        applied = await t.awaitApplied(timeout: 10)
        XCTAssertTrue(applied)
        XCTAssertEqual(t.stats().queuedEvents, queued + 2)
        XCTAssertEqual(t.anonymousId, first)
        XCTAssertNotNil(t.currentSession)
        try t.tryReset()
        applied = await t.awaitApplied(timeout: 10)
        XCTAssertNil(t.currentSession)
        XCTAssertTrue(applied)
        XCTAssertNotEqual(t.anonymousId, first)
        XCTAssertEqual(t.stats().deviceId, device)
        XCTAssertEqual(t.stats().queuedEvents, queued + 3)
        XCTAssertThrowsError(try t.tryAlias(""))
        t.alias("")
        await t.shutdown()
    }

    // Mirrors Scenarios.contextAndLifecycleEventsFollowTheApp.
    func testContextAndLifecycleEventsFollowTheApp() async throws {
        let dir = tempDir()
        func cfg(_ version: String) -> TernConfiguration {
            TernConfiguration(appId: "demo", appKey: "demo-key", dataDirectory: dir).appVersion(version)
                .context(DeviceContext(appBuild: "b\(version)", osName: "ios", osVersion: "17.2",
                                       deviceModel: "iPhone15,2", screenWidth: 1179, screenHeight: 2556,
                                       locale: "en-GB", timeZone: "Europe/London", networkType: .wifi))
        }
        let first = try await Tern.start(cfg("1.0"))
        first.track("hello")
        first.setNetworkType(.cellular)
        first.setNetworkType(.cellular)
        try first.trySetLocale("fr-FR")
        first.setTimeZone("Europe/Paris")
        first.track("bonjour")
        var applied = await first.awaitApplied(timeout: 10)
        XCTAssertTrue(applied)
        XCTAssertEqual(first.stats().queuedEvents, 4)
        let install = first.installId
        XCTAssertNotNil(install)
        XCTAssertThrowsError(try first.trySetLocale(""))
        first.setTimeZone("")
        await first.shutdown()
        let second = try await Tern.start(cfg("1.1"))
        applied = await second.awaitApplied(timeout: 10)
        XCTAssertTrue(applied)
        XCTAssertEqual(second.stats().queuedEvents, 6)
        XCTAssertEqual(second.installId, install)
        second.didEnterBackground()
        second.didEnterForeground()
        applied = await second.awaitApplied(timeout: 10)
        XCTAssertTrue(applied)
        XCTAssertEqual(second.stats().queuedEvents, 8)
        await second.shutdown()
    }
    // Mirrors Scenarios.consentHoldsReleasesAndDeletionResetsTheDevice.
    func testConsentHoldsReleasesAndDeletionResetsTheDevice() async throws {
        let t = try await Tern.start(config())
        var applied = await t.awaitApplied(timeout: 10)
        XCTAssertTrue(applied)
        XCTAssertEqual(t.consent(.analytics), .granted)
        let queued = t.stats().queuedEvents
        t.setConsent(.analytics, .pending)
        for _ in 0..<3 { t.track("held") }
        applied = await t.awaitApplied(timeout: 10)
        XCTAssertTrue(applied)
        XCTAssertEqual(t.stats().queuedEvents, queued)
        XCTAssertEqual(t.stats().consentPending, 3)
        try t.trySetConsent(.messaging, .denied)
        XCTAssertEqual(t.consent(.messaging), .denied)
        t.messageImpression(messageId: "m1", action: "shown")
        XCTAssertEqual(t.stats().refusedConsent, 1)
        t.setConsent(.analytics, .granted)
        applied = await t.awaitApplied(timeout: 10)
        XCTAssertTrue(applied)
        XCTAssertEqual(t.stats().queuedEvents, queued + 3)
        XCTAssertEqual(t.stats().consentPending, 0)
        let device = t.stats().deviceId
        try t.tryRequestDeletion()
        applied = await t.awaitApplied(timeout: 10)
        XCTAssertTrue(applied)
        XCTAssertEqual(t.stats().queuedEvents, 0)
        XCTAssertNotEqual(t.stats().deviceId, device)
        XCTAssertEqual(t.stats().deletionRequests, 1)
        XCTAssertEqual(t.consent(.messaging), .denied)
        await t.shutdown()
    }
    // Mirrors Scenarios.pushTokensAndPushEventsAreRecorded.
    func testPushTokensAndPushEventsAreRecorded() async throws {
        let t = try await Tern.start(config())
        var applied = await t.awaitApplied(timeout: 10)
        XCTAssertTrue(applied)
        let queued = t.stats().queuedEvents
        TernPush.didRegister(t, deviceToken: Data([0xab, 0xcd]), environment: .production)
        // The same token again records nothing.
        try t.trySetPushToken("abcd", environment: .production)
        TernPush.received(t, userInfo: [TernPush.campaignKey: "spring"])
        try t.tryPushOpened("spring", action: "buy")
        applied = await t.awaitApplied(timeout: 10)
        XCTAssertTrue(applied)
        XCTAssertEqual(t.stats().queuedEvents, queued + 3)
        XCTAssertThrowsError(try t.trySetPushToken("has space", environment: .production))
        XCTAssertThrowsError(try t.trySetPushToken("abcd", environment: nil))
        XCTAssertThrowsError(try t.tryPushReceived(""))
        t.pushReceived("")
        await t.shutdown()
    }

    func testErrorHandlerAndLogSinkReceiveRefusals() async throws {
        let t = try await Tern.start(config())
        let errors = Recorder<(String, TernError)>()
        let lines = Recorder<String>()
        t.setErrorHandler { call, error in errors.append((call, error)) }
        XCTAssertTrue(TernFFI.installLogSink(sink: LineSink(lines), level: .debug))
        defer { TernLog.level = .off }
        XCTAssertEqual(TernLog.level, .debug)
        t.track("")
        t.track("")
        t.optOut(true)
        t.track("x")
        XCTAssertEqual(errors.all.map { $0.0 }, ["track", "track", "track"])
        guard case .InvalidEvent = errors.all[0].1 else { return XCTFail("\(errors.all)") }
        XCTAssertEqual(errors.all[2].1, .OptedOut)
        XCTAssertTrue(lines.all.contains { $0.hasPrefix("warn") && $0.contains("call refused") && $0.contains("track") }, "\(lines.all)")
        XCTAssertTrue(lines.all.contains { $0.hasPrefix("debug") && $0.contains("call refused") }, "\(lines.all)")
        t.clearErrorHandler()
        t.track("z")
        XCTAssertEqual(errors.all.count, 3)
        TernLog.level = .off
        let before = lines.all.count
        t.track("")
        XCTAssertEqual(lines.all.count, before)
        // The os_log bridge: installs, maps levels, logs without trapping.
        XCTAssertTrue(TernLog.install(level: .error))
        XCTAssertEqual(TernLog.level, .error)
        XCTAssertEqual(OSLogSink.type(of: .error).rawValue, OSLogType.error.rawValue)
        XCTAssertEqual(OSLogSink.type(of: .warn).rawValue, OSLogType.default.rawValue)
        XCTAssertEqual(OSLogSink.type(of: .info).rawValue, OSLogType.info.rawValue)
        XCTAssertEqual(OSLogSink.type(of: .trace).rawValue, OSLogType.debug.rawValue)
        OSLogSink(publicMessages: true).log(level: .error, target: "tern_test", message: "public line")
        OSLogSink(publicMessages: false).log(level: .warn, target: "tern_test", message: "private line")
        await t.shutdown()
    }

    func testEightThreadsTrackingAtOnceLoseNothing() async throws {
        let t = try await Tern.start(config())
        await withTaskGroup(of: Void.self) { group in
            for n in 0..<8 {
                group.addTask { for i in 0..<500 { t.track("thread_event", properties: ["thread": n, "i": i]) } }
            }
        }
        _ = await t.awaitApplied(timeout: 30)
        XCTAssertEqual(t.stats().queuedEvents, 4000)
        await t.shutdown()
    }

    func testEventsSurviveShutdownAndRestart() async throws {
        let dir = tempDir()
        let t = try await Tern.start(config(dir))
        for i in 0..<100 { t.track("persisted", properties: ["i": i]) }
        await t.shutdown()
        let again = try await Tern.start(config(dir))
        _ = await again.awaitApplied(timeout: 10)
        XCTAssertEqual(again.stats().queuedEvents, 100)
        await again.shutdown()
    }

    func testDeleteLocalDataEmptiesTheQueueAndResetsTheDevice() async throws {
        let t = try await Tern.start(config())
        for _ in 0..<10 { t.track("e") }
        _ = await t.awaitApplied(timeout: 10)
        let before = t.stats().deviceId
        t.deleteLocalData()
        _ = await t.awaitApplied(timeout: 10)
        XCTAssertEqual(t.stats().queuedEvents, 0)
        XCTAssertNotEqual(before, t.stats().deviceId)
        await t.shutdown()
    }

    func testListenerHandlesCancel() async throws {
        let t = try await Tern.start(config())
        let sub = t.onConfigChange { _ in }
        XCTAssertFalse(sub.isCancelled)
        sub.cancel()
        XCTAssertTrue(sub.isCancelled)
        sub.cancel()
        let messages = t.onMessage { _ in }
        XCTAssertFalse(messages.isCancelled)
        await t.shutdown()
        XCTAssertTrue(messages.isCancelled, "shutdown removes listeners")
    }

    func testFlushAndWaitWithoutARelayTimesOutAndKeepsTheEvents() async throws {
        let t = try await Tern.start(config())
        let emptyFlushed = await t.flushAndWait(timeout: 5)
        XCTAssertTrue(emptyFlushed)
        for _ in 0..<5 { t.track("waiting") }
        let flushed = await t.flushAndWait(timeout: 0.3)
        XCTAssertFalse(flushed)
        XCTAssertEqual(t.stats().queuedEvents, 5)
        await t.shutdown()
    }

    func testASecondInstanceOnTheSameDirectoryGetsDataDirInUse() async throws {
        let dir = tempDir()
        let first = try await Tern.start(config(dir))
        let second = Tern()
        do {
            try await second.open(config(dir))
            XCTFail("expected DataDirInUse")
        } catch TernError.DataDirInUse(let path) {
            XCTAssertFalse(path.isEmpty)
        }
        XCTAssertEqual(second.state, .unavailable)
        second.track("x") // a counted no-op, not a stream of I/O errors
        XCTAssertThrowsError(try second.tryTrack("x")) { error in
            guard case TernError.DataDirInUse = error else { return XCTFail("\(error)") }
        }
        XCTAssertEqual(second.stats().refusedUnavailable, 2)
        first.track("y")
        _ = await first.awaitApplied(timeout: 10)
        XCTAssertEqual(first.stats().queuedEvents, 1)
        await second.shutdown()
        await first.shutdown()
    }

    func testDurationsAreClampedAtTheBoundary() {
        XCTAssertEqual(TernTime.milliseconds(-1), 0)
        XCTAssertEqual(TernTime.milliseconds(-.infinity), 0)
        XCTAssertEqual(TernTime.milliseconds(-0.0), 0)
        XCTAssertEqual(TernTime.milliseconds(0), 0)
        XCTAssertEqual(TernTime.milliseconds(0.0001), 1)
        XCTAssertEqual(TernTime.milliseconds(1.5), 1500)
        XCTAssertEqual(TernTime.milliseconds(.infinity), UInt64.max)
        XCTAssertEqual(TernTime.milliseconds(.nan), UInt64.max)
        XCTAssertEqual(TernTime.milliseconds(1e300), UInt64.max)
        XCTAssertEqual(TernTime.milliseconds(Double(UInt64.max) / 1000), UInt64.max)
        XCTAssertEqual(TernTime.milliseconds(.greatestFiniteMagnitude), UInt64.max)
        let c = config().maxBatchAge(-5).sessionTimeout(.infinity)
        XCTAssertEqual(c.options.maxBatchAgeMs, 0)
        XCTAssertEqual(c.options.sessionTimeoutMs, UInt64.max)
        XCTAssertTrue(TernDeadline(after: 0).passed)
        XCTAssertFalse(TernDeadline(after: .infinity).passed)
        XCTAssertEqual(TernDeadline(after: .infinity).remainingMilliseconds, UInt64.max)
        XCTAssertEqual(TernDeadline(after: 1e18).remainingMilliseconds, UInt64.max)
        XCTAssertLessThanOrEqual(TernDeadline(after: 10).remainingMilliseconds, 10_000)
    }

    func testPlatformIsReportedPerOS() {
        #if os(macOS)
        XCTAssertEqual(TernPlatform.current, "macos")
        #elseif targetEnvironment(macCatalyst)
        XCTAssertEqual(TernPlatform.current, "macos")
        #elseif os(iOS)
        XCTAssertEqual(TernPlatform.current, ProcessInfo.processInfo.isiOSAppOnMac ? "macos" : "ios")
        #endif
        XCTAssertEqual(config().options.platform, TernPlatform.current)
        XCTAssertEqual(config().platform("android").options.platform, "android")
        XCTAssertEqual(config().options.sdkName, "tern-swift")
    }

    func testLiveRoundTripDeliversEventsAndObservesAConfigChange() async throws {
        guard let envPath = ProcessInfo.processInfo.environment["TERN_STACK_ENV"] else {
            return XCTFail("TERN_STACK_ENV is not set: start `tern-fleet stack` first")
        }
        var env: [String: String] = [:]
        for line in try String(contentsOfFile: envPath).split(separator: "\n") {
            let parts = line.split(separator: "=", maxSplits: 1).map(String.init)
            if parts.count == 2 { env[parts[0]] = parts[1] }
        }
        let stub = try XCTUnwrap(env["TERN_STUB_URL"])
        let cfg = config()
            .shardMapJSON(try String(contentsOfFile: try XCTUnwrap(env["TERN_SHARD_MAP_FILE"])))
            .trustCertificate(pem: try String(contentsOfFile: try XCTUnwrap(env["TERN_CA_FILE"])), only: true)
            .maxBatchEvents(20)
            .maxBatchAge(1)
        let t = try await Tern.start(cfg)
        var changes = t.configChanges.makeAsyncIterator()
        let first = await changes.next()
        XCTAssertGreaterThan(first?.version ?? 0, 0)
        for i in 0..<50 { t.track("swift_live", properties: ["i": i]) }
        let uploaded = await t.flushAndWait(timeout: 60)
        XCTAssertTrue(uploaded, "store not emptied within 60 s")
        var request = URLRequest(url: try XCTUnwrap(URL(string: "\(stub)/admin/apps/demo/values/welcome_text")))
        request.httpMethod = "PUT"
        request.httpBody = Data("\"Bonjour\"".utf8)
        _ = try await URLSession.shared.data(for: request)
        while let change = await changes.next() {
            if change.changedValues.contains("welcome_text") { break }
        }
        XCTAssertEqual(t.string("welcome_text", default: ""), "Bonjour")
        await t.shutdown()
    }
}

/// A log sink that keeps `level message` lines.
final class LineSink: TernFFI.LogSink {
    let lines: Recorder<String>
    init(_ lines: Recorder<String>) { self.lines = lines }
    func log(level: TernLogLevel, target: String, message: String) { lines.append("\(level) \(message)") }
}
