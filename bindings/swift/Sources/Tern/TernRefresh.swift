// One background refresh run (BGAppRefreshTask), free of BackgroundTasks so that XCTest
// on macOS runs it against a fake task. TernBackgroundFlush.swift adapts BGTask to it.
import Foundation

/// A background task as the refresh run sees it: a `BGTask`, or a fake in tests. Both
/// methods may be called from any thread.
protocol TernRefreshTask: AnyObject, Sendable {
    /// Sets the handler the system calls shortly before the task's time runs out.
    func setExpirationHandler(_ handler: @escaping @Sendable () -> Void)
    /// Tells the system the task is done.
    func setTaskCompleted(success: Bool)
}

/// The refresh run.
///
/// Budget: the system gives an app-refresh task about 30 s. A run sets the expiration
/// handler before anything else, schedules the next run, then spends at most `budget`
/// seconds in all (default 20, at most 25): waiting for the instance (5 s at most, out of
/// the same budget) and then `flushAndWait` for what is left. The expiration handler
/// cancels the work (which ends the wait at once) and completes the task with `false`;
/// the task is completed exactly once.
enum TernRefreshRun {
    /// The default total budget of a run, seconds.
    static let defaultBudget: TimeInterval = 20
    /// The largest budget accepted, seconds (well under the ~30 s the system gives).
    static let maxBudget: TimeInterval = 25
    /// The longest wait for an instance, seconds (out of the budget).
    static let maxInstanceWait: TimeInterval = 5

    /// `budget` clamped to 1...`maxBudget` (NaN: the default).
    static func clampBudget(_ budget: TimeInterval) -> TimeInterval {
        budget.isNaN ? defaultBudget : min(max(budget, 1), maxBudget)
    }

    /// Runs one refresh on `task`. `instance(timeout)` returns the SDK once the app has
    /// started it (or `nil` after `timeout` seconds). Returns the work's task (tests
    /// await it).
    @discardableResult
    static func run(_ task: TernRefreshTask, budget: TimeInterval = defaultBudget,
                    scheduleNext: @Sendable () -> Void,
                    instance: @escaping @Sendable (TimeInterval) async -> TernLifecycleTarget?) -> Task<Void, Never> {
        let deadline = TernDeadline(after: clampBudget(budget))
        let completion = TernRefreshCompletion(task)
        let work = TernTaskBox()
        // First: an expiration at any later point cancels the work and completes.
        task.setExpirationHandler {
            work.cancel()
            completion.finish(success: false)
        }
        scheduleNext()
        let running = Task.detached(priority: .utility) {
            let tern = await instance(min(TernRefreshRun.maxInstanceWait, deadline.remainingSeconds))
            guard let tern, !Task.isCancelled else {
                // No instance in this process (the app did not start Tern): nothing to do.
                return completion.finish(success: !Task.isCancelled)
            }
            if tern.isOptedOut { return completion.finish(success: true) }
            let emptied = await tern.flushAndWait(timeout: deadline.remainingSeconds)
            completion.finish(success: emptied)
        }
        work.set(running)
        return running
    }
}

/// Completes a refresh task exactly once (the work and the expiration handler race).
final class TernRefreshCompletion: Sendable {
    private let task: TernRefreshTask
    private let done = TernFlag()

    init(_ task: TernRefreshTask) { self.task = task }

    /// Completes the task with `success` unless it was completed already.
    func finish(success: Bool) {
        if done.set() { task.setTaskCompleted(success: success) }
    }
}

/// A task handle that can be cancelled before it is set.
///
/// `@unchecked Sendable`: `task` and `cancelled` are read and written under `lock` only.
final class TernTaskBox: @unchecked Sendable {
    private let lock = NSLock()
    private var task: Task<Void, Never>?
    private var cancelled = false

    /// Sets the task; cancels it at once when `cancel` came first.
    func set(_ t: Task<Void, Never>) {
        lock.lock()
        let cancelNow = cancelled
        if !cancelNow { task = t }
        lock.unlock()
        if cancelNow { t.cancel() }
    }

    /// Cancels the task, now or when it is set.
    func cancel() {
        lock.lock()
        cancelled = true
        let t = task
        lock.unlock()
        t?.cancel()
    }
}
