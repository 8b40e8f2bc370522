// XCTest of the Apple glue: TernApp, the lifecycle glue (TernLifecycle.swift) against
// recording fakes of the application object and of the SDK, on a private
// NotificationCenter (UIKit's names do not exist on macOS, where CI runs the suite), and
// TernNetworkObserver. The Swift counterpart of the Android glue tests.
import Foundation
import XCTest
@testable import Tern

/// A fake `UIApplication`: its state, and the background tasks begun and ended.
@MainActor
final class FakeApplication: TernApplication {
    var isInBackground: Bool
    private(set) var begun: [TernBackgroundTaskID] = []
    private(set) var ended: [TernBackgroundTaskID] = []
    private(set) var expirations: [TernBackgroundTaskID: @MainActor @Sendable () -> Void] = [:]
    /// Whether the system grants background time.
    var grantsBackgroundTime = true
    private var next = 0

    init(inBackground: Bool) { isInBackground = inBackground }

    func beginBackgroundTask(name: String, expiration: @escaping @MainActor @Sendable () -> Void) -> TernBackgroundTaskID? {
        guard grantsBackgroundTime else { return nil }
        XCTAssertEqual(name, TernLifecycleGlue.backgroundTaskName)
        next += 1
        let id = TernBackgroundTaskID(rawValue: next)
        begun.append(id)
        expirations[id] = expiration
        return id
    }

    func endBackgroundTask(_ id: TernBackgroundTaskID) {
        XCTAssertTrue(begun.contains(id), "ended a task never begun")
        XCTAssertFalse(ended.contains(id), "ended task \(id.rawValue) twice")
        ended.append(id)
    }

    /// The system's time runs out for `id`.
    func expire(_ id: TernBackgroundTaskID) { expirations[id]?() }
}

/// A fake SDK: records the lifecycle calls in order; `flushAndWait` waits until the
/// test releases it (or its task is cancelled) and records how it ended.
final class FakeTarget: TernLifecycleTarget, @unchecked Sendable {
    private let lock = NSLock()
    private var log: [String] = []
    private var waiters: [CheckedContinuation<Bool, Never>] = []
    private var released: Bool?
    var optedOut = false

    var calls: [String] { lock.lock(); defer { lock.unlock() }; return log }
    private func record(_ s: String) { lock.lock(); log.append(s); lock.unlock() }

    func didEnterForeground() { record("foreground") }
    func didEnterBackground() { record("background") }
    var isOptedOut: Bool { optedOut }

    func flushAndWait(timeout: TimeInterval) async -> Bool {
        record("flush(\(timeout))")
        let emptied = await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<Bool, Never>) in
                lock.lock()
                if let value = released {
                    lock.unlock()
                    c.resume(returning: value)
                } else {
                    waiters.append(c)
                    lock.unlock()
                }
            }
        } onCancel: {
            self.release(false, cancelled: true)
        }
        record("flush returned \(emptied)")
        return emptied
    }

    /// Ends every wait (now and later) with `emptied`.
    func release(_ emptied: Bool, cancelled: Bool = false) {
        lock.lock()
        if cancelled { log.append("flush cancelled") }
        if released == nil { released = emptied }
        let w = waiters
        waiters = []
        lock.unlock()
        for c in w { c.resume(returning: emptied) }
    }
}

final class TernGlueTests: XCTestCase {
    private let center = NotificationCenter()
    private let names = TernLifecycleNotifications(
        didFinishLaunching: [Notification.Name("test.didFinishLaunching")],
        didBecomeActive: [Notification.Name("test.didBecomeActive")],
        willEnterForeground: [Notification.Name("test.willEnterForeground")],
        didEnterBackground: [Notification.Name("test.didEnterBackground")])

    private func tempDir() -> URL {
        FileManager.default.temporaryDirectory.appendingPathComponent("tern-glue-\(UUID().uuidString)")
    }

    @MainActor
    private func glue(_ target: FakeTarget, _ app: FakeApplication?, onBackground: @escaping @Sendable () -> Void = {}) -> TernLifecycleGlue {
        TernLifecycleGlue(target: target, application: { app }, center: center, names: names,
                          uploadTimeout: 25, onBackground: onBackground)
    }

    /// Lets the queue of lifecycle calls drain (a barrier, not a sleep).
    @MainActor
    private func drain(_ g: TernLifecycleGlue) { g.queue.sync {} }

    /// Lets the main actor run what the notification handlers enqueued (each handler
    /// enqueues one main-actor job; the main actor runs them in order).
    @MainActor
    private func settle() async {
        for _ in 0..<10 { await Task.yield() }
    }

    override func tearDown() async throws {
        await TernApp.stop()
    }

    // MARK: Lifecycle glue (fakes)

    @MainActor
    func testColdLaunchInTheForegroundStartsASessionWithoutWillEnterForeground() {
        let target = FakeTarget()
        let g = glue(target, FakeApplication(inBackground: false))
        g.attach()
        drain(g)
        XCTAssertEqual(target.calls, ["foreground"])
        XCTAssertEqual(g.phase, .foreground)
        // didFinishLaunching and didBecomeActive then change nothing.
        g.handle(.didFinishLaunching)
        g.handle(.didBecomeActive)
        drain(g)
        XCTAssertEqual(target.calls, ["foreground"])
        g.stop()
    }

    @MainActor
    func testColdLaunchStartsASessionInTheRealSDK() async throws {
        let tern = Tern()
        let g = TernLifecycleGlue(target: tern, application: { FakeApplication(inBackground: false) }, center: center,
                                  names: names, uploadTimeout: 25, onBackground: {})
        g.attach() // before the instance is open: the call is kept and applied at open
        g.queue.sync {}
        try await tern.open(TernConfiguration(appId: "demo", appKey: "demo-key", dataDirectory: tempDir()))
        XCTAssertNotNil(tern.currentSession, "no session after a cold launch")
        g.stop()
        await tern.shutdown()
    }

    @MainActor
    func testLaunchInTheBackgroundStartsNoSessionUntilForeground() {
        let target = FakeTarget()
        let app = FakeApplication(inBackground: true)
        let g = glue(target, app)
        g.attach()
        g.handle(.didFinishLaunching)
        drain(g)
        XCTAssertEqual(target.calls, [])
        XCTAssertEqual(g.phase, .background)
        XCTAssertTrue(app.begun.isEmpty, "a background launch is not a move to the background")
        app.isInBackground = false
        g.handle(.willEnterForeground)
        drain(g)
        XCTAssertEqual(target.calls, ["foreground"])
        g.stop()
    }

    @MainActor
    func testStateReadAtDidFinishLaunchingWhenAttachedBeforeIt() {
        let target = FakeTarget()
        var app: FakeApplication?
        let g = TernLifecycleGlue(target: target, application: { app }, center: center, names: names,
                                  uploadTimeout: 25, onBackground: {})
        g.attach() // no application object yet (a SwiftUI App.init): nothing to read
        drain(g)
        XCTAssertEqual(target.calls, [])
        app = FakeApplication(inBackground: false)
        g.handle(.didFinishLaunching)
        drain(g)
        XCTAssertEqual(target.calls, ["foreground"])
        g.stop()
    }

    @MainActor
    func testNotificationsReachTheGlueInOrderAndOnlyChangesReachTheSDK() async {
        let target = FakeTarget()
        let app = FakeApplication(inBackground: false)
        let g = glue(target, app)
        g.attach()
        center.post(name: names.didBecomeActive[0], object: nil)
        center.post(name: names.didEnterBackground[0], object: nil)
        center.post(name: names.didEnterBackground[0], object: nil)
        center.post(name: names.willEnterForeground[0], object: nil)
        center.post(name: names.didBecomeActive[0], object: nil)
        await settle()
        drain(g)
        XCTAssertEqual(target.calls.filter { !$0.hasPrefix("flush") }, ["foreground", "background", "foreground"])
        g.stop()
        // After stop nothing is delivered.
        center.post(name: names.didEnterBackground[0], object: nil)
        await settle()
        drain(g)
        XCTAssertEqual(target.calls.filter { !$0.hasPrefix("flush") }, ["foreground", "background", "foreground"])
    }

    @MainActor
    func testBackgroundWrapsTheUploadInABackgroundTaskThatEnds() async {
        let target = FakeTarget()
        let app = FakeApplication(inBackground: false)
        let scheduled = Recorder<String>()
        let g = glue(target, app, onBackground: { scheduled.append("refresh") })
        g.attach()
        app.isInBackground = true
        g.handle(.didEnterBackground)
        XCTAssertEqual(app.begun.count, 1, "no background task around the upload")
        XCTAssertTrue(g.isUploading)
        XCTAssertEqual(scheduled.all, ["refresh"])
        await waitUntil("the upload to wait") { target.calls.contains("flush(25.0)") }
        drain(g)
        XCTAssertEqual(target.calls.filter { !$0.hasPrefix("flush") }, ["foreground", "background"])
        XCTAssertTrue(app.ended.isEmpty, "ended before the upload finished")
        // A second move to the background while uploading begins no second task.
        g.handle(.willEnterForeground)
        g.handle(.didEnterBackground)
        XCTAssertEqual(app.begun.count, 1)
        target.release(true)
        await waitUntil("the background task to end") { app.ended.count == 1 }
        XCTAssertEqual(app.ended, app.begun)
        XCTAssertFalse(g.isUploading)
        // The expiration handler of an ended task changes nothing.
        app.expire(app.begun[0])
        XCTAssertEqual(app.ended.count, 1)
        g.stop()
    }

    @MainActor
    func testExpirationCancelsTheUploadAndEndsTheTaskOnce() async {
        let target = FakeTarget()
        let app = FakeApplication(inBackground: false)
        let g = glue(target, app)
        g.attach()
        g.handle(.didEnterBackground)
        await waitUntil("the upload to wait") { target.calls.contains("flush(25.0)") }
        let id = app.begun[0]
        app.expire(id) // on the main actor, as UIKit calls it
        XCTAssertEqual(app.ended, [id], "the task did not end in its expiration handler")
        XCTAssertFalse(g.isUploading)
        await waitUntil("the wait to be cancelled") { target.calls.contains("flush returned false") }
        XCTAssertTrue(target.calls.contains("flush cancelled"))
        await settle()
        XCTAssertEqual(app.ended, [id], "ended twice")
        // The next move to the background begins a new task.
        g.handle(.willEnterForeground)
        g.handle(.didEnterBackground)
        XCTAssertEqual(app.begun.count, 2)
        g.stop()
        XCTAssertEqual(app.ended.count, 2, "stop left a background task running")
    }

    @MainActor
    func testNoBackgroundTimeStillRequestsTheFlush() {
        let target = FakeTarget()
        let app = FakeApplication(inBackground: false)
        app.grantsBackgroundTime = false
        let g = glue(target, app)
        g.attach()
        g.handle(.didEnterBackground)
        drain(g)
        XCTAssertEqual(target.calls, ["foreground", "background"])
        XCTAssertFalse(g.isUploading)
        g.stop()
    }

    // MARK: TernApp

    func testDefaultDataDirectoryIsInApplicationSupport() {
        let dir = TernApp.defaultDataDirectory()
        XCTAssertEqual(dir.lastPathComponent, "tern")
        XCTAssertTrue(dir.path.contains("Application Support"), dir.path)
    }

    func testStartHandsOutAnInstanceAtOnceAndStopAllowsARestart() async throws {
        // No glue and no lifecycle events: the counts below are the app's calls only.
        let options = TernAppOptions(dataDirectory: tempDir(), lifecycle: false, network: false)
        let tern = TernApp.start(appId: "demo", appKey: "demo-key", options: options) { $0.autoLifecycle(false) }
        XCTAssertTrue(TernApp.current === tern)
        tern.track("glue_event") // accepted before the open finished, or after
        let again = TernApp.start(appId: "demo", appKey: "demo-key", options: options)
        XCTAssertTrue(again === tern)
        let started = await TernApp.awaitStarted(timeout: 30)
        XCTAssertTrue(started === tern)
        _ = await tern.awaitApplied(timeout: 10)
        let report = await TernApp.stop()
        XCTAssertNotNil(report)
        XCTAssertNil(TernApp.current)
        // The reference the app still holds stays safe.
        tern.track("after stop")
        XCTAssertEqual(tern.stats().refusedAfterStop, 1)
        let restarted = TernApp.start(appId: "demo", appKey: "demo-key", options: options) { $0.autoLifecycle(false) }
        XCTAssertFalse(restarted === tern)
        _ = await TernApp.awaitStarted(timeout: 30)
        _ = await restarted.awaitApplied(timeout: 10)
        XCTAssertEqual(restarted.stats().queuedEvents, 1, "the event survived the restart")
    }

    func testAwaitStarted() async throws {
        let none = await TernApp.awaitStarted(timeout: 0)
        XCTAssertNil(none)
        let tern = TernApp.start(appId: "demo", appKey: "demo-key", options: TernAppOptions(dataDirectory: tempDir()))
        let seen = await TernApp.awaitStarted(timeout: 30)
        XCTAssertTrue(seen === tern)
        XCTAssertEqual(tern.state, .running)
    }

    func testInvalidConfigThroughTernAppIsReportedAndLeavesASafeInstance() async throws {
        let errors = Recorder<String>()
        let options = TernAppOptions(dataDirectory: tempDir(), lifecycle: false, network: false,
                                     onError: { call, error in errors.append("\(call):\(error)") })
        let tern = TernApp.start(appId: "", appKey: "k", options: options)
        let started = await TernApp.awaitStarted(timeout: 30)
        XCTAssertNil(started)
        await waitUntil("the open to fail") { tern.state == .unavailable }
        XCTAssertTrue(errors.all.contains { $0.hasPrefix("open:") && $0.contains("app_id") }, "\(errors.all)")
        tern.track("x")
        XCTAssertEqual(tern.stats().refusedUnavailable, 1)
    }

    func testASecondProcessOnTheDataDirectoryGetsDataDirInUseOnce() async throws {
        let dir = tempDir()
        let holder = try await Tern.start(TernConfiguration(appId: "demo", appKey: "demo-key", dataDirectory: dir))
        let errors = Recorder<String>()
        let tern = TernApp.start(appId: "demo", appKey: "demo-key",
                                 options: TernAppOptions(dataDirectory: dir, lifecycle: false, network: false,
                                                         onError: { call, error in
                                     errors.append("\(call):\(error)")
                                 }))
        await waitUntil("the open to fail") { tern.state == .unavailable }
        XCTAssertEqual(errors.all.filter { $0.hasPrefix("open:") }.count, 1)
        XCTAssertTrue(errors.all.first?.contains("DataDirInUse") ?? false, "\(errors.all)")
        for _ in 0..<5 { tern.track("counted, not an I/O error") }
        XCTAssertEqual(tern.stats().refusedUnavailable, 5)
        XCTAssertFalse(errors.all.contains { $0.contains("Io(") }, "\(errors.all)")
        await holder.shutdown()
    }

    func testNetworkObserverReportsTheStateAtStart() {
        let initial = expectation(description: "initial state")
        initial.assertForOverFulfill = false
        let observer = TernNetworkObserver { _ in initial.fulfill() }
        observer.start()
        wait(for: [initial], timeout: 10)
        observer.stop()
    }

    func testLocaleAndTimeZoneChangesReachTheSDK() {
        final class Calls: TernContextTarget, @unchecked Sendable {
            private let lock = NSLock()
            private var log: [String] = []
            var all: [String] { lock.lock(); defer { lock.unlock() }; return log }
            func setLocale(_ locale: String?) { lock.lock(); log.append("locale \(locale ?? "-")"); lock.unlock() }
            func setTimeZone(_ timeZone: String?) { lock.lock(); log.append("tz \(timeZone ?? "-")"); lock.unlock() }
        }
        let calls = Calls()
        let center = NotificationCenter()
        let current = Recorder<(String?, String?)>()
        current.append(("en-GB", "Europe/London"))
        let observer = TernLocaleObserver(target: calls, center: center, read: { current.all.last ?? (nil, nil) })
        observer.start()
        current.append(("fr-FR", "Europe/Paris"))
        center.post(name: NSLocale.currentLocaleDidChangeNotification, object: nil)
        current.append(("fr-FR", "Asia/Tokyo"))
        center.post(name: .NSSystemTimeZoneDidChange, object: nil)
        observer.drain()
        XCTAssertEqual(calls.all, ["locale fr-FR", "tz Europe/Paris", "locale fr-FR", "tz Asia/Tokyo"])
        observer.stop()
        center.post(name: .NSSystemTimeZoneDidChange, object: nil)
        observer.drain()
        XCTAssertEqual(calls.all.count, 4, "observed after stop")
    }

    func testNetworkTypeOfAPath() {
        XCTAssertEqual(TernDeviceInfo.networkType(satisfied: false, wifi: true, cellular: false, ethernet: false), TernNetworkType.none)
        XCTAssertEqual(TernDeviceInfo.networkType(satisfied: true, wifi: true, cellular: true, ethernet: false), TernNetworkType.wifi)
        XCTAssertEqual(TernDeviceInfo.networkType(satisfied: true, wifi: false, cellular: true, ethernet: false), TernNetworkType.cellular)
        XCTAssertEqual(TernDeviceInfo.networkType(satisfied: true, wifi: false, cellular: false, ethernet: true), TernNetworkType.ethernet)
        XCTAssertEqual(TernDeviceInfo.networkType(satisfied: true, wifi: false, cellular: false, ethernet: false), TernNetworkType.unknown)
        let context = TernDeviceInfo.current()
        XCTAssertEqual(context.osName, TernPlatform.current)
        XCTAssertNotNil(context.timeZone)
    }
}
