// XCTest suite mirroring the shared Kotlin scenarios
// (bindings/kotlin/src/testFixtures/kotlin/dev/tern/Scenarios.kt: one test per scenario,
// same names) plus the Apple glue (TernGlueTests.swift). Runs on macOS CI with the
// XCFramework built by bindings/scripts/build-ios.sh; it cannot be compiled on the Linux
// build machine (bindings/scripts/swift_symbols.py checks its references to the layer).
// The live round trip needs TERN_STACK_ENV (the stack.env of `tern-fleet stack`), as in
// the Kotlin suite; without it it fails.
import Foundation
import XCTest
@testable import Tern

final class TernTests: XCTestCase {
    private func tempDir() -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("tern-swift-\(UUID().uuidString)")
        try? FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }

    private func config(_ dir: URL? = nil) -> TernConfiguration {
        TernConfiguration(appId: "demo", appKey: "demo-key", dataDirectory: dir ?? tempDir()).appVersion("1.2.3")
    }

    func testRecordsEveryKindOfCall() async throws {
        let t = try await Tern.start(config())
        XCTAssertFalse(Tern.version.isEmpty)
        try t.track("app_open")
        try t.track("viewed", properties: ["s": "x", "i": 3, "d": 1.5, "b": true])
        try t.purchase(productId: "sku-1", amountMicros: 1_990_000, currency: "EUR", quantity: 2)
        try t.identify("user-42")
        try t.setUserProperties(["plan": "pro"], unset: ["old"])
        try t.startSession()
        XCTAssertNotNil(t.currentSession)
        try t.didEnterBackground()
        try t.didEnterForeground()
        t.setNetworkAvailable(false)
        t.setNetworkAvailable(true)
        try t.messageImpression(messageId: "welcome", action: "ok")
        try t.endSession()
        t.flush()
        let applied = await t.awaitApplied(timeout: 10)
        XCTAssertTrue(applied)
        let s = try t.stats()
        XCTAssertEqual(s.userId, "user-42")
        XCTAssertGreaterThanOrEqual(s.queuedEvents, 5)
        try await t.shutdown()
    }

    func testDefaultsBeforeAnyBundle() async throws {
        let t = try await Tern.start(config())
        XCTAssertEqual(t.string("welcome_text", default: "dflt"), "dflt")
        XCTAssertEqual(t.int("max_items", default: 7), 7)
        XCTAssertEqual(t.flag("new_checkout"), .off)
        XCTAssertFalse(t.isEnabled("new_checkout"))
        XCTAssertEqual(t.configInfo.version, 0)
        try await t.shutdown()
    }

    func testInvalidEventsAreTypedErrors() async throws {
        let t = try await Tern.start(config())
        XCTAssertThrowsError(try t.track("")) { error in
            guard case TernError.InvalidEvent(let field, _) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(field, "event name")
        }
        XCTAssertThrowsError(try t.track("ok", properties: ["n": Double.nan]))
        XCTAssertThrowsError(try t.purchase(productId: "sku", amountMicros: 100, currency: "euro"))
        try await t.shutdown()
    }

    private func expectInvalidConfig(_ config: TernConfiguration, field: String,
                                     file: StaticString = #filePath, line: UInt = #line) async {
        do {
            let t = try await Tern.start(config)
            try? await t.shutdown()
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

    func testOptOutAndShutdown() async throws {
        let dir = tempDir()
        let t = try await Tern.start(config(dir))
        try t.optOut(true)
        XCTAssertThrowsError(try t.track("x")) { XCTAssertEqual($0 as? TernError, .OptedOut) }
        try await t.shutdown()
        XCTAssertThrowsError(try t.track("x")) { XCTAssertEqual($0 as? TernError, .ShutDown) }
        let again = try await Tern.start(config(dir))
        _ = await again.awaitApplied(timeout: 10)
        XCTAssertTrue(again.isOptedOut)
        try await again.shutdown()
    }

    func testEightThreadsTrackingAtOnce() async throws {
        let t = try await Tern.start(config())
        try await withThrowingTaskGroup(of: Void.self) { group in
            for n in 0..<8 {
                group.addTask { for i in 0..<500 { try t.track("thread_event", properties: ["thread": n, "i": i]) } }
            }
            try await group.waitForAll()
        }
        _ = await t.awaitApplied(timeout: 30)
        XCTAssertEqual(try t.stats().queuedEvents, 4000)
        try await t.shutdown()
    }

    func testEventsSurviveRestart() async throws {
        let dir = tempDir()
        let t = try await Tern.start(config(dir))
        for i in 0..<100 { try t.track("persisted", properties: ["i": i]) }
        try await t.shutdown()
        let again = try await Tern.start(config(dir))
        _ = await again.awaitApplied(timeout: 10)
        XCTAssertEqual(try again.stats().queuedEvents, 100)
        try await again.shutdown()
    }

    func testSubscriptionsCancel() async throws {
        let t = try await Tern.start(config())
        let sub = try t.onConfigChange { _ in }
        XCTAssertFalse(sub.isCancelled)
        sub.cancel()
        XCTAssertTrue(sub.isCancelled)
        sub.cancel()
        let messages = try t.onMessage { _ in }
        messages.cancel()
        try await t.shutdown()
    }

    func testDeleteLocalDataEmptiesTheQueueAndResetsTheDevice() async throws {
        let t = try await Tern.start(config())
        for _ in 0..<10 { try t.track("e") }
        _ = await t.awaitApplied(timeout: 10)
        let before = try t.stats().deviceId
        try t.deleteLocalData()
        _ = await t.awaitApplied(timeout: 10)
        XCTAssertEqual(try t.stats().queuedEvents, 0)
        XCTAssertNotEqual(before, try t.stats().deviceId)
        try await t.shutdown()
    }

    func testFlushAndWaitWithoutARelayTimesOutAndKeepsTheEvents() async throws {
        let t = try await Tern.start(config())
        let emptyFlushed = await t.flushAndWait(timeout: 5)
        XCTAssertTrue(emptyFlushed)
        for _ in 0..<5 { try t.track("waiting") }
        let flushed = await t.flushAndWait(timeout: 0.3)
        XCTAssertFalse(flushed)
        XCTAssertEqual(try t.stats().queuedEvents, 5)
        try await t.shutdown()
    }

    func testASecondInstanceOnTheSameDirectoryReportsTheLock() async throws {
        let dir = tempDir()
        let first = try await Tern.start(config(dir))
        _ = await first.awaitApplied(timeout: 10)
        let second = try await Tern.start(config(dir))
        let deadline = Date().addingTimeInterval(10)
        while try second.stats().storeError == nil && Date() < deadline {
            try await Task.sleep(nanoseconds: 20_000_000)
        }
        let err = try second.stats().storeError
        XCTAssertTrue(err?.contains("in use") ?? false, "\(String(describing: err))")
        XCTAssertThrowsError(try second.track("x"))
        try await second.shutdown()
        try await first.shutdown()
    }

    func testLiveRoundTrip() async throws {
        guard let envPath = ProcessInfo.processInfo.environment["TERN_STACK_ENV"] else {
            return XCTFail("TERN_STACK_ENV is not set: start `tern-fleet stack` first")
        }
        var env: [String: String] = [:]
        for line in try String(contentsOfFile: envPath).split(separator: "\n") {
            let parts = line.split(separator: "=", maxSplits: 1).map(String.init)
            if parts.count == 2 { env[parts[0]] = parts[1] }
        }
        let stub = env["TERN_STUB_URL"]!
        let cfg = config()
            .shardMapJSON(try String(contentsOfFile: env["TERN_SHARD_MAP_FILE"]!))
            .trustCertificate(pem: try String(contentsOfFile: env["TERN_CA_FILE"]!), only: true)
            .maxBatchEvents(20)
            .maxBatchAge(1)
        let t = try await Tern.start(cfg)
        var changes = t.configChanges.makeAsyncIterator()
        let first = await changes.next()
        XCTAssertGreaterThan(first?.version ?? 0, 0)
        for i in 0..<50 { try t.track("swift_live", properties: ["i": i]) }
        let uploaded = await t.flushAndWait(timeout: 60)
        XCTAssertTrue(uploaded, "store not emptied within 60 s")
        var request = URLRequest(url: URL(string: "\(stub)/admin/apps/demo/values/welcome_text")!)
        request.httpMethod = "PUT"
        request.httpBody = Data("\"Bonjour\"".utf8)
        _ = try await URLSession.shared.data(for: request)
        while let change = await changes.next() {
            if change.changedValues.contains("welcome_text") { break }
        }
        XCTAssertEqual(t.string("welcome_text", default: ""), "Bonjour")
        try await t.shutdown()
    }
}
