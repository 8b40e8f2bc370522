// XCTest of the background refresh run (TernRefresh.swift) against a fake BGTask and a
// fake SDK: the expiration handler is set before any work, the run fits its budget,
// an expiration cancels the work and completes the task exactly once.
import Foundation
import XCTest
@testable import Tern

/// A fake `BGAppRefreshTask`: records its calls in a shared log.
final class FakeRefreshTask: TernRefreshTask, @unchecked Sendable {
    private let lock = NSLock()
    private let log: Recorder<String>
    private var handler: (@Sendable () -> Void)?
    private var done: [Bool] = []

    init(_ log: Recorder<String>) { self.log = log }

    func setExpirationHandler(_ handler: @escaping @Sendable () -> Void) {
        lock.lock(); self.handler = handler; lock.unlock()
        log.append("expiration handler set")
    }

    func setTaskCompleted(success: Bool) {
        lock.lock(); done.append(success); lock.unlock()
        log.append("completed(\(success))")
    }

    /// How the task was completed, in order (once, when right).
    var completions: [Bool] { lock.lock(); defer { lock.unlock() }; return done }

    /// The system expires the task (on a queue of its own).
    func expire() {
        lock.lock(); let h = handler; lock.unlock()
        h?()
    }
}

final class TernRefreshTests: XCTestCase {
    /// The timeout `FakeTarget.flushAndWait` was called with.
    private func flushTimeout(_ target: FakeTarget) -> Double? {
        guard let call = target.calls.first(where: { $0.hasPrefix("flush(") }) else { return nil }
        return Double(call.dropFirst("flush(".count).dropLast())
    }

    func testExpirationHandlerIsSetFirstAndTheRunFitsItsBudget() async throws {
        let log = Recorder<String>()
        let task = FakeRefreshTask(log)
        let target = FakeTarget()
        let work = TernRefreshRun.run(task, scheduleNext: { log.append("schedule next") },
                                      instance: { timeout in log.append("instance(\(timeout))"); return target })
        await waitUntil("the flush to start") { self.flushTimeout(target) != nil }
        XCTAssertEqual(Array(log.all.prefix(3)), ["expiration handler set", "schedule next", "instance(5.0)"])
        let timeout = try XCTUnwrap(flushTimeout(target))
        XCTAssertGreaterThan(timeout, 0)
        XCTAssertLessThanOrEqual(timeout, TernRefreshRun.defaultBudget, "the wait outlives the run's budget")
        XCTAssertEqual(task.completions, [])
        target.release(true)
        await work.value
        XCTAssertEqual(task.completions, [true])
    }

    func testExpirationCancelsTheFlushAndCompletesOnce() async {
        let log = Recorder<String>()
        let task = FakeRefreshTask(log)
        let target = FakeTarget()
        let work = TernRefreshRun.run(task, scheduleNext: {}, instance: { _ in target })
        await waitUntil("the flush to start") { self.flushTimeout(target) != nil }
        task.expire()
        XCTAssertEqual(task.completions, [false], "the expiration handler did not complete the task")
        await work.value
        XCTAssertTrue(target.calls.contains("flush cancelled"), "\(target.calls)")
        XCTAssertTrue(target.calls.contains("flush returned false"), "\(target.calls)")
        XCTAssertEqual(task.completions, [false], "completed twice")
    }

    func testExpirationWhileWaitingForTheInstanceCancelsTheWait() async {
        let log = Recorder<String>()
        let task = FakeRefreshTask(log)
        let work = TernRefreshRun.run(task, scheduleNext: {}, instance: { timeout in
            log.append("instance(\(timeout))")
            try? await Task.sleep(nanoseconds: 60_000_000_000) // ended by the cancellation
            log.append("instance wait cancelled: \(Task.isCancelled)")
            return nil
        })
        await waitUntil("the run to wait for the instance") { log.all.contains("instance(5.0)") }
        task.expire()
        await work.value
        XCTAssertTrue(log.all.contains("instance wait cancelled: true"), "\(log.all)")
        XCTAssertEqual(task.completions, [false])
    }

    func testNoInstanceOrOptedOutCompletesWithoutFlushing() async {
        let log = Recorder<String>()
        let none = FakeRefreshTask(log)
        await TernRefreshRun.run(none, scheduleNext: {}, instance: { _ in nil }).value
        XCTAssertEqual(none.completions, [true])
        let optedOut = FakeTarget()
        optedOut.optedOut = true
        let task = FakeRefreshTask(log)
        await TernRefreshRun.run(task, scheduleNext: {}, instance: { _ in optedOut }).value
        XCTAssertEqual(task.completions, [true])
        XCTAssertEqual(optedOut.calls, [], "flushed while opted out")
    }

    func testRefreshWithTheRealSDKCompletesWithTheFlushOutcome() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tern-refresh-\(UUID().uuidString)")
        let tern = try await Tern.start(TernConfiguration(appId: "demo", appKey: "demo-key", dataDirectory: dir))
        let log = Recorder<String>()
        let empty = FakeRefreshTask(log)
        await TernRefreshRun.run(empty, budget: 5, scheduleNext: {}, instance: { _ in tern }).value
        XCTAssertEqual(empty.completions, [true], "an empty store flushes at once")
        tern.track("no relay: stays queued")
        let queued = FakeRefreshTask(log)
        let work = TernRefreshRun.run(queued, budget: 25, scheduleNext: {}, instance: { _ in tern })
        await waitUntil("the core's wait to start") { tern.stats().flushWaits == 1 }
        queued.expire()
        await work.value
        XCTAssertEqual(queued.completions, [false])
        await waitUntil("the core's wait to end") { tern.stats().flushWaits == 0 }
        await tern.shutdown()
    }

    func testBudgetIsClamped() {
        XCTAssertEqual(TernRefreshRun.clampBudget(20), 20)
        XCTAssertEqual(TernRefreshRun.clampBudget(100), TernRefreshRun.maxBudget)
        XCTAssertEqual(TernRefreshRun.clampBudget(.infinity), TernRefreshRun.maxBudget)
        XCTAssertEqual(TernRefreshRun.clampBudget(-1), 1)
        XCTAssertEqual(TernRefreshRun.clampBudget(.nan), TernRefreshRun.defaultBudget)
        XCTAssertLessThan(TernRefreshRun.maxBudget, 30)
    }

    func testTaskBoxCancelledBeforeTheTaskIsSetCancelsIt() async {
        let box = TernTaskBox()
        box.cancel()
        let t = Task { try? await Task.sleep(nanoseconds: 60_000_000_000) }
        box.set(t)
        await t.value
        XCTAssertTrue(t.isCancelled)
    }
}
