// XCTest of the Apple glue (TernApp, TernLifecycleObserver, TernNetworkObserver), the
// Swift counterpart of bindings/android/src/androidTest/.../TernAndroidGlueTest.kt. The
// lifecycle tests post notifications on a private NotificationCenter (UIKit's names do
// not exist on macOS, where CI runs the suite).
import Foundation
import XCTest
@testable import Tern

final class TernGlueTests: XCTestCase {
    private func tempDir() -> URL {
        FileManager.default.temporaryDirectory.appendingPathComponent("tern-glue-\(UUID().uuidString)")
    }

    override func tearDown() async throws {
        try await TernApp.stop()
    }

    func testDefaultDataDirectoryIsInApplicationSupport() {
        let dir = TernApp.defaultDataDirectory()
        XCTAssertEqual(dir.lastPathComponent, "tern")
        XCTAssertTrue(dir.path.contains("Application Support"), dir.path)
    }

    func testStartIsIdempotentAndStopAllowsARestart() async throws {
        let options = TernAppOptions(dataDirectory: tempDir())
        let tern = try await TernApp.start(appId: "demo", appKey: "demo-key", options: options)
        XCTAssertTrue(TernApp.current === tern)
        let again = try await TernApp.start(appId: "demo", appKey: "demo-key", options: options)
        XCTAssertTrue(again === tern)
        try tern.track("glue_event")
        _ = await tern.awaitApplied(timeout: 10)
        let report = try await TernApp.stop()
        XCTAssertNotNil(report)
        XCTAssertNil(TernApp.current)
        let restarted = try await TernApp.start(appId: "demo", appKey: "demo-key", options: options)
        _ = await restarted.awaitApplied(timeout: 10)
        XCTAssertEqual(try restarted.stats().queuedEvents, 1, "the event survived the restart")
    }

    func testAwaitStarted() async throws {
        let none = await TernApp.awaitStarted(timeout: 0)
        XCTAssertNil(none)
        let starting = Task { try await TernApp.start(appId: "demo", appKey: "demo-key",
                                                      options: TernAppOptions(dataDirectory: self.tempDir())) }
        let seen = await TernApp.awaitStarted(timeout: 30)
        let started = try await starting.value
        XCTAssertTrue(seen === started)
    }

    func testInvalidConfigThroughTernAppNamesTheField() async {
        do {
            _ = try await TernApp.start(appId: "", appKey: "k", options: TernAppOptions(dataDirectory: tempDir()))
            XCTFail("expected InvalidConfig")
        } catch TernError.InvalidConfig(let field, _) {
            XCTAssertEqual(field, "app_id")
        } catch {
            XCTFail("\(error)")
        }
        XCTAssertNil(TernApp.current)
    }

    func testLifecycleObserverForwardsNotificationsOffTheMainThread() {
        let center = NotificationCenter()
        let fg = Notification.Name("test.foreground")
        let bg = Notification.Name("test.background")
        let foreground = expectation(description: "foreground")
        let background = expectation(description: "background")
        let observer = TernLifecycleObserver(center: center, foreground: [fg], background: [bg],
                                             onForeground: {
                                                 XCTAssertFalse(Thread.isMainThread)
                                                 foreground.fulfill()
                                             },
                                             onBackground: {
                                                 XCTAssertFalse(Thread.isMainThread)
                                                 background.fulfill()
                                             })
        center.post(name: fg, object: nil)
        center.post(name: bg, object: nil)
        wait(for: [foreground, background], timeout: 5, enforceOrder: true)
        observer.stop()
        // After stop nothing is delivered (a second fulfill would fail the test).
        center.post(name: fg, object: nil)
        center.post(name: bg, object: nil)
        Thread.sleep(forTimeInterval: 0.3)
    }

    func testNetworkObserverReportsTheStateAtStart() {
        let initial = expectation(description: "initial state")
        initial.assertForOverFulfill = false
        let observer = TernNetworkObserver { _ in initial.fulfill() }
        observer.start()
        wait(for: [initial], timeout: 10)
        observer.stop()
    }
}
