// The BGTaskScheduler job that uploads what the device holds while the app is in the
// background (iOS, Mac Catalyst, visionOS). The run itself is `TernRefreshRun`
// (TernRefresh.swift); this file adapts BackgroundTasks to it.
#if os(iOS) || os(visionOS)
import BackgroundTasks
import Foundation

/// Background flush through `BGTaskScheduler` (`BGAppRefreshTask`).
///
/// Setup, once:
/// 1. Info.plist: `BGTaskSchedulerPermittedIdentifiers` = [`dev.tern.flush`] (or your
///    identifier) and `UIBackgroundModes` containing `fetch`.
/// 2. In `application(_:didFinishLaunchingWithOptions:)`, before it returns:
///    `TernBackgroundFlush.register()`.
///
/// `TernApp` then submits the request each time the app goes to the background. A run
/// sets its expiration handler first, schedules the next run, waits (out of its budget)
/// for `TernApp.current`, calls `flushAndWait` for the rest of the budget (default 20 s,
/// at most 25 s — the system gives about 30 s), and completes the task with whether the
/// device store emptied. When the system expires the task, the wait is cancelled and the
/// task completed (`success: false`) at once.
public enum TernBackgroundFlush {
    /// The default task identifier (list it in `BGTaskSchedulerPermittedIdentifiers`).
    public static let defaultIdentifier = "dev.tern.flush"
    /// The default total budget of a run, seconds.
    public static let defaultBudget: TimeInterval = TernRefreshRun.defaultBudget

    private static let settings = Settings()

    /// Registers the launch handler. Call it before `application(_:didFinishLaunchingWithOptions:)`
    /// returns — `BGTaskScheduler` raises an Objective-C exception (which Swift cannot
    /// catch: the app terminates) for a handler registered after launch. Returns `false`
    /// when the identifier is not in the Info.plist. A second call with the same
    /// identifier only updates `interval` and `budget` (registering an identifier twice
    /// would also raise). `interval`: earliest next run after each move to the background,
    /// seconds (clamped to 0...7 days; NaN: 1 h). `budget`: total time of a run, seconds
    /// (clamped to 1...25).
    @discardableResult
    public static func register(identifier: String = defaultIdentifier, interval: TimeInterval = 3600,
                                budget: TimeInterval = defaultBudget) -> Bool {
        settings.register(identifier: identifier,
                          interval: interval.isNaN ? 3600 : min(max(interval, 0), 7 * 24 * 3600),
                          budget: TernRefreshRun.clampBudget(budget)) {
            BGTaskScheduler.shared.register(forTaskWithIdentifier: identifier, using: nil) { task in
                TernBackgroundFlush.run(task)
            }
        }
    }

    /// Submits the next run (no earlier than the registered interval from now). No-op
    /// before `register`. Errors (simulator, identifier missing) are ignored: the next
    /// launch or background move submits again.
    public static func schedule() {
        guard let s = settings.get() else { return }
        let request = BGAppRefreshTaskRequest(identifier: s.identifier)
        request.earliestBeginDate = Date(timeIntervalSinceNow: s.interval)
        try? BGTaskScheduler.shared.submit(request)
    }

    private static func run(_ task: BGTask) {
        let budget = settings.get()?.budget ?? defaultBudget
        TernRefreshRun.run(BGTaskAdapter(task), budget: budget,
                           scheduleNext: { TernBackgroundFlush.schedule() },
                           instance: { timeout in await TernApp.awaitCurrent(timeout: timeout) })
    }
}

/// `BGTask` as a `TernRefreshTask`.
///
/// `@unchecked Sendable`: it only forwards to `BGTask`, whose expiration handler and
/// `setTaskCompleted(success:)` are meant to be used from any queue (the system calls
/// the handler on a queue of its own; completion comes from the work's thread).
private final class BGTaskAdapter: TernRefreshTask, @unchecked Sendable {
    private let task: BGTask
    init(_ task: BGTask) { self.task = task }
    func setExpirationHandler(_ handler: @escaping @Sendable () -> Void) { task.expirationHandler = handler }
    func setTaskCompleted(success: Bool) { task.setTaskCompleted(success: success) }
}

/// The registered identifier, interval and budget, and what `BGTaskScheduler` answered
/// for each identifier registered.
///
/// `@unchecked Sendable`: `value` and `registered` are read and written under `lock` only.
private final class Settings: @unchecked Sendable {
    private let lock = NSLock()
    private var value: (identifier: String, interval: TimeInterval, budget: TimeInterval)?
    private var registered: [String: Bool] = [:]

    /// Records the settings; calls `register` once per identifier (under the lock, so
    /// two threads cannot both register it) and returns its first answer.
    func register(identifier: String, interval: TimeInterval, budget: TimeInterval,
                  _ register: () -> Bool) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        value = (identifier: identifier, interval: interval, budget: budget)
        if let answer = registered[identifier] { return answer }
        let answer = register()
        registered[identifier] = answer
        return answer
    }

    func get() -> (identifier: String, interval: TimeInterval, budget: TimeInterval)? {
        lock.lock(); defer { lock.unlock() }; return value
    }
}
#endif
