// The app-lifecycle glue, free of UIKit so that XCTest on macOS runs it against fakes:
// the application object, the notification center and the SDK are behind the protocols
// below; TernApp.swift adapts UIApplication (and NSApplication) to them.
//
// Rules (bindings/README.md, "Integration guide — iOS / Swift"):
// - The state is read when the glue attaches (`applicationState`, on the main actor) and
//   again at `didFinishLaunching`: an app launched in the foreground starts a session at
//   once (`willEnterForeground` is not posted at cold launch).
// - `didBecomeActive` / `willEnterForeground` → foreground, `didEnterBackground` →
//   background; only changes reach the SDK, in order, on one serial queue.
// - On each move to the background the upload is wrapped in a background task
//   (`beginBackgroundTask`), ended when `flushAndWait` returns, or in the expiration
//   handler (which also cancels the wait) — exactly once either way.
import Foundation

/// A background task granted by the application object.
struct TernBackgroundTaskID: Hashable, Sendable {
    let rawValue: Int
}

/// The application object as the lifecycle glue sees it: `UIApplication` on iOS,
/// `NSApplication` on macOS, a fake in tests. Used on the main actor only.
@MainActor
protocol TernApplication: AnyObject {
    /// Whether the app is in the background now (`applicationState == .background`).
    var isInBackground: Bool { get }
    /// Asks for time to finish work in the background; `nil` when none is granted.
    /// `expiration` runs on the main actor shortly before that time runs out; the task
    /// must be ended by then.
    func beginBackgroundTask(name: String, expiration: @escaping @MainActor @Sendable () -> Void) -> TernBackgroundTaskID?
    /// Ends a task `beginBackgroundTask` returned.
    func endBackgroundTask(_ id: TernBackgroundTaskID)
}

/// What the lifecycle glue and the background refresh drive: a `Tern`, or a recorder
/// in tests.
protocol TernLifecycleTarget: AnyObject, Sendable {
    /// The app came to the foreground.
    func didEnterForeground()
    /// The app went to the background.
    func didEnterBackground()
    /// True while opted out.
    var isOptedOut: Bool { get }
    /// Flush and wait until the store is empty or `timeout` passes; cancellable.
    func flushAndWait(timeout: TimeInterval) async -> Bool
}

extension Tern: TernLifecycleTarget {}

/// A lifecycle event the glue reacts to.
enum TernLifecycleEvent: Sendable {
    /// The glue was attached: read the application state.
    case attached
    /// `didFinishLaunchingNotification`: read the application state again.
    case didFinishLaunching
    /// `didBecomeActiveNotification`: the app is in the foreground.
    case didBecomeActive
    /// `willEnterForegroundNotification`.
    case willEnterForeground
    /// `didEnterBackgroundNotification`.
    case didEnterBackground
}

/// The notification names observed for each event (none on platforms without an
/// application lifecycle).
struct TernLifecycleNotifications: Sendable {
    var didFinishLaunching: [Notification.Name] = []
    var didBecomeActive: [Notification.Name] = []
    var willEnterForeground: [Notification.Name] = []
    var didEnterBackground: [Notification.Name] = []

    /// Each name with its event.
    var all: [(Notification.Name, TernLifecycleEvent)] {
        didFinishLaunching.map { ($0, .didFinishLaunching) }
            + didBecomeActive.map { ($0, .didBecomeActive) }
            + willEnterForeground.map { ($0, .willEnterForeground) }
            + didEnterBackground.map { ($0, .didEnterBackground) }
    }
}

/// The lifecycle glue of one instance. Lives on the main actor; calls the target on
/// `queue`, never on the main thread.
@MainActor
final class TernLifecycleGlue {
    /// What the glue believes the app is doing.
    enum Phase: Sendable { case unknown, foreground, background }

    /// Name of the background task wrapping the upload.
    static let backgroundTaskName = "dev.tern.upload"

    private(set) var phase: Phase = .unknown
    /// The serial queue of the target's lifecycle calls (a barrier for tests).
    let queue = DispatchQueue(label: "dev.tern.lifecycle", qos: .utility)

    private let target: TernLifecycleTarget
    private let application: @MainActor () -> TernApplication?
    private var app: TernApplication?
    private let center: NotificationCenter
    private let names: TernLifecycleNotifications
    private let uploadTimeout: TimeInterval
    private let onBackground: @Sendable () -> Void
    private var tokens: [NSObjectProtocol] = []
    private var upload: (id: TernBackgroundTaskID, generation: Int, task: Task<Void, Never>)?
    private var generation = 0
    private var stopped = false

    /// - Parameters:
    ///   - application: the application object, asked for when the glue attaches (not
    ///     before: in a SwiftUI `App.init` it does not exist yet); `nil` = none (a process
    ///     without one: no state to read, no background tasks).
    ///   - uploadTimeout: longest wait for the upload inside a background task, seconds.
    ///   - onBackground: called on each move to the background (schedules the
    ///     `BGTaskScheduler` refresh).
    init(target: TernLifecycleTarget, application: @escaping @MainActor () -> TernApplication?,
         center: NotificationCenter, names: TernLifecycleNotifications, uploadTimeout: TimeInterval,
         onBackground: @escaping @Sendable () -> Void) {
        self.target = target
        self.application = application
        self.center = center
        self.names = names
        self.uploadTimeout = uploadTimeout
        self.onBackground = onBackground
    }

    /// Observes the notifications, then reads the application state. Once.
    func attach() {
        guard tokens.isEmpty, !stopped else { return }
        for (name, event) in names.all {
            // Delivered on the posting thread (UIKit posts on the main thread), then
            // handled on the main actor, in posting order.
            tokens.append(center.addObserver(forName: name, object: nil, queue: nil) { @Sendable [weak self] _ in
                guard let glue = self else { return }
                Task { @MainActor in glue.handle(event) }
            })
        }
        handle(.attached)
    }

    /// Reacts to `event`.
    func handle(_ event: TernLifecycleEvent) {
        guard !stopped else { return }
        switch event {
        case .attached, .didFinishLaunching:
            if app == nil { app = application() }
            guard let app else { return }
            if !app.isInBackground {
                enterForeground()
            } else if phase == .unknown {
                // Launched in the background (a background fetch, a push): no session;
                // a later `willEnterForeground` starts one.
                phase = .background
            }
        case .didBecomeActive, .willEnterForeground:
            enterForeground()
        case .didEnterBackground:
            enterBackground()
        }
    }

    /// Stops observing and ends a background task still running. Idempotent.
    func stop() {
        stopped = true
        for token in tokens { center.removeObserver(token) }
        tokens = []
        if let u = upload {
            u.task.cancel()
            endUpload()
        }
    }

    /// Whether an upload's background task is running (for tests).
    var isUploading: Bool { upload != nil }

    private func enterForeground() {
        guard phase != .foreground else { return }
        phase = .foreground
        let target = self.target
        queue.async { target.didEnterForeground() }
    }

    private func enterBackground() {
        guard phase != .background else { return }
        phase = .background
        let target = self.target
        queue.async { target.didEnterBackground() }
        onBackground()
        beginUpload()
    }

    /// Wraps the upload in a background task: one at a time; none when the system grants
    /// no background time (the flush `didEnterBackground` requested still runs while the
    /// app does).
    private func beginUpload() {
        guard upload == nil else { return }
        if app == nil { app = application() }
        guard let app else { return }
        generation += 1
        let gen = generation
        guard let id = app.beginBackgroundTask(name: TernLifecycleGlue.backgroundTaskName, expiration: { [weak self] in
            self?.expireUpload(gen)
        }) else { return }
        let target = self.target
        let timeout = uploadTimeout
        let task = Task { @MainActor [weak self] in
            _ = await target.flushAndWait(timeout: timeout)
            self?.finishUpload(gen)
        }
        upload = (id: id, generation: gen, task: task)
    }

    /// The system is about to suspend the app: cancel the wait, end the task now.
    private func expireUpload(_ gen: Int) {
        guard let u = upload, u.generation == gen else { return }
        u.task.cancel()
        endUpload()
    }

    /// The wait returned: end the task (unless it already ended).
    private func finishUpload(_ gen: Int) {
        guard let u = upload, u.generation == gen else { return }
        endUpload()
    }

    private func endUpload() {
        guard let u = upload else { return }
        upload = nil
        app?.endBackgroundTask(u.id)
    }
}
