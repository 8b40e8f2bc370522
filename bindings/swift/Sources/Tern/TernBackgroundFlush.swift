// The BGTaskScheduler job that uploads what the device holds while the app is in the
// background (iOS only; on other platforms this file is empty).
#if os(iOS)
import BackgroundTasks
import Foundation

/// Background flush through `BGTaskScheduler` (`BGAppRefreshTask`).
///
/// Setup, once:
/// 1. Info.plist: `BGTaskSchedulerPermittedIdentifiers` = [`dev.tern.flush`] (or your
///    identifier) and `UIBackgroundModes` containing `fetch`.
/// 2. In `application(_:didFinishLaunchingWithOptions:)`, before it returns:
///    `TernBackgroundFlush.register()`.
/// `TernApp` then submits the request each time the app goes to the background. A run
/// waits for `TernApp.current` (the app starts Tern at launch), calls `flushAndWait`, and
/// completes the task with whether the device store emptied; it schedules the next run
/// first, and stops early when the system expires the task.
public enum TernBackgroundFlush {
    /// The default task identifier (list it in `BGTaskSchedulerPermittedIdentifiers`).
    public static let defaultIdentifier = "dev.tern.flush"

    private static let settings = Settings()

    /// Registers the launch handler. Call before `application(_:didFinishLaunchingWithOptions:)`
    /// returns; returns `false` when the identifier is not in the Info.plist.
    @discardableResult
    public static func register(identifier: String = defaultIdentifier, interval: TimeInterval = 3600) -> Bool {
        settings.set(identifier: identifier, interval: interval)
        return BGTaskScheduler.shared.register(forTaskWithIdentifier: identifier, using: nil) { task in
            TernBackgroundFlush.run(task)
        }
    }

    /// Submits the next run (no earlier than the registered interval from now). No-op
    /// before `register`. Errors (simulator, identifier missing) are ignored: the next
    /// launch flushes anyway.
    public static func schedule() {
        guard let s = settings.get() else { return }
        let request = BGAppRefreshTaskRequest(identifier: s.identifier)
        request.earliestBeginDate = Date(timeIntervalSinceNow: s.interval)
        try? BGTaskScheduler.shared.submit(request)
    }

    private static func run(_ task: BGTask) {
        schedule()
        let completion = Completion(task)
        let work = Task.detached(priority: .utility) {
            guard let tern = await TernApp.awaitStarted(timeout: 10), !tern.isOptedOut else {
                return completion.finish(success: true)
            }
            completion.finish(success: await tern.flushAndWait(timeout: 25))
        }
        task.expirationHandler = {
            work.cancel()
            completion.finish(success: false)
        }
    }
}

private final class Settings: @unchecked Sendable {
    private let lock = NSLock()
    private var value: (identifier: String, interval: TimeInterval)?

    func set(identifier: String, interval: TimeInterval) {
        lock.lock(); value = (identifier: identifier, interval: interval); lock.unlock()
    }

    func get() -> (identifier: String, interval: TimeInterval)? {
        lock.lock(); defer { lock.unlock() }; return value
    }
}

/// Completes a task exactly once (the work and the expiration handler race).
private final class Completion: @unchecked Sendable {
    private let lock = NSLock()
    private var task: BGTask?

    init(_ task: BGTask) { self.task = task }

    func finish(success: Bool) {
        lock.lock()
        let pending = task
        task = nil
        lock.unlock()
        pending?.setTaskCompleted(success: success)
    }
}
#endif
