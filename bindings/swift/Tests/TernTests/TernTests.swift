// XCTest suite mirroring the Kotlin host suite (bindings/kotlin/src/test). Runs on macOS
// CI with the XCFramework built by bindings/scripts/build-ios.sh; it cannot be compiled
// on the Linux build machine. The live round trip needs TERN_STACK_ENV (the stack.env of
// `tern-fleet stack`), as in the Kotlin suite.
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

    func testInvalidConfigNamesTheField() async {
        do {
            _ = try await Tern.start(TernConfiguration(appId: "", appKey: "k", dataDirectory: tempDir()))
            XCTFail("expected invalidConfig")
        } catch TernError.InvalidConfig(let field, _) {
            XCTAssertEqual(field, "app_id")
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
        try await t.shutdown()
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
        t.flush()
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
