// The app-side entry of Tern on Apple platforms: starts the SDK off the main thread with
// the platform defaults (data directory, app version) and attaches the glue — lifecycle
// notifications, NWPathMonitor, and on iOS the BGTaskScheduler flush. Threading and
// wiring only: every decision is made by the Rust core.
import Foundation
import Network
#if canImport(UIKit)
import UIKit
#endif

/// What `TernApp.start` attaches besides the SDK. Every part is on by default.
public struct TernAppOptions: Sendable {
    /// Data directory; `nil` = `TernApp.defaultDataDirectory()`.
    public var dataDirectory: URL?
    /// App lifecycle notifications → `didEnterForeground()` / `didEnterBackground()`.
    public var lifecycle: Bool
    /// `NWPathMonitor` → `setNetworkAvailable` (with the state at start).
    public var network: Bool
    /// On iOS: submit the `BGTaskScheduler` flush request each time the app goes to the
    /// background (needs `TernBackgroundFlush.register()` at launch and the Info.plist
    /// entry, see the README).
    public var backgroundFlush: Bool

    /// Every part on, the default data directory.
    public init(dataDirectory: URL? = nil, lifecycle: Bool = true, network: Bool = true, backgroundFlush: Bool = true) {
        self.dataDirectory = dataDirectory
        self.lifecycle = lifecycle
        self.network = network
        self.backgroundFlush = backgroundFlush
    }
}

/// Tern in an app: start it once, early (e.g. in `application(_:didFinishLaunchingWithOptions:)`
/// inside a `Task`), then use `TernApp.current` or the returned instance.
public enum TernApp {
    private static let state = AppState()

    /// `Application Support/tern` of the app's container (computed only, no disk access;
    /// `start` creates it off the main thread and excludes it from backups — the device id
    /// and the queued events must not be restored onto another device).
    public static func defaultDataDirectory() -> URL {
        let base = FileManager.default.urls(for: .applicationSupportDirectory, in: .userDomainMask).first
            ?? FileManager.default.temporaryDirectory
        return base.appendingPathComponent("tern", isDirectory: true)
    }

    /// Starts the SDK off the main thread with the data directory of `options` (default
    /// `defaultDataDirectory()`) and the app's `CFBundleShortVersionString`, then
    /// `configure` (relays, batching, ...), and attaches the glue of `options`. When the
    /// SDK is already running, returns the running instance unchanged. Throws
    /// `TernError.InvalidConfig` naming the field at fault.
    @discardableResult
    public static func start(appId: String, appKey: String, options: TernAppOptions = TernAppOptions(),
                             configure: @escaping @Sendable (TernConfiguration) -> TernConfiguration = { $0 }) async throws -> Tern {
        try await Task.detached(priority: .utility) {
            try TernApp.state.startOnce {
                let dir = options.dataDirectory ?? TernApp.defaultDataDirectory()
                var config = TernConfiguration(appId: appId, appKey: appKey, dataDirectory: dir)
                if let version = Bundle.main.infoDictionary?["CFBundleShortVersionString"] as? String {
                    config = config.appVersion(version)
                }
                TernApp.prepare(dir)
                let tern = try Tern.startBlocking(configure(config))
                return (tern: tern, glue: TernGlue(tern: tern, options: options))
            }
        }.value
    }

    /// The running instance, or `nil` before `start` finished and after `stop`.
    public static var current: Tern? { state.current }

    /// Waits for the running instance at most `timeout` seconds; `nil` if none started by then.
    public static func awaitStarted(timeout: TimeInterval) async -> Tern? {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            if let tern = state.current { return tern }
            if Date() >= deadline || Task.isCancelled { return nil }
            try? await Task.sleep(nanoseconds: 50_000_000)
        }
    }

    /// Detaches the glue and shuts the SDK down (waiting at most `timeout`). Returns `nil`
    /// when it was not running. A later `start` starts afresh.
    @discardableResult
    public static func stop(timeout: TimeInterval = 5) async throws -> ShutdownReport? {
        guard let running = state.take() else { return nil }
        running.glue.stop()
        return try await running.tern.shutdown(timeout: timeout)
    }

    /// Creates the directory and excludes it from backups (best effort: on failure the
    /// core reports the directory error itself).
    private static func prepare(_ dir: URL) {
        try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        var url = dir
        var values = URLResourceValues()
        values.isExcludedFromBackup = true
        try? url.setResourceValues(values)
    }
}

/// The running instance and its glue, behind a lock.
private final class AppState: @unchecked Sendable {
    private let lock = NSLock()
    private var running: (tern: Tern, glue: TernGlue)?

    var current: Tern? { lock.lock(); defer { lock.unlock() }; return running?.tern }

    func startOnce(_ make: () throws -> (tern: Tern, glue: TernGlue)) throws -> Tern {
        lock.lock()
        defer { lock.unlock() }
        if let r = running { return r.tern }
        let made = try make()
        running = made
        return made.tern
    }

    func take() -> (tern: Tern, glue: TernGlue)? {
        lock.lock()
        defer { lock.unlock() }
        let r = running
        running = nil
        return r
    }
}

/// The glue of one running instance.
final class TernGlue: @unchecked Sendable {
    private var lifecycle: TernLifecycleObserver?
    private var network: TernNetworkObserver?

    init(tern: Tern, options: TernAppOptions) {
        if options.network {
            network = TernNetworkObserver { [weak tern] available in tern?.setNetworkAvailable(available) }
            network?.start()
        }
        if options.lifecycle {
            let backgroundFlush = options.backgroundFlush
            lifecycle = TernLifecycleObserver(
                onForeground: { [weak tern] in try? tern?.didEnterForeground() },
                onBackground: { [weak tern] in
                    try? tern?.didEnterBackground()
                    #if os(iOS)
                    if backgroundFlush { TernBackgroundFlush.schedule() }
                    #endif
                    _ = backgroundFlush
                })
        }
    }

    func stop() {
        lifecycle?.stop()
        network?.stop()
    }
}

/// App lifecycle notifications → `onForeground` / `onBackground`, delivered one at a time
/// on a background queue (never on the main thread).
public final class TernLifecycleObserver: @unchecked Sendable {
    /// The notifications that mean "foreground" by default: on iOS/tvOS
    /// `UIApplication.willEnterForegroundNotification` (also posted in scene-based apps
    /// when the first scene comes to the foreground); none elsewhere.
    public static var defaultForeground: [Notification.Name] {
        #if canImport(UIKit) && !os(watchOS)
        return [UIApplication.willEnterForegroundNotification]
        #else
        return []
        #endif
    }

    /// The notifications that mean "background" by default: on iOS/tvOS
    /// `UIApplication.didEnterBackgroundNotification`; none elsewhere.
    public static var defaultBackground: [Notification.Name] {
        #if canImport(UIKit) && !os(watchOS)
        return [UIApplication.didEnterBackgroundNotification]
        #else
        return []
        #endif
    }

    private let center: NotificationCenter
    private let queue: OperationQueue
    private var tokens: [NSObjectProtocol] = []
    private let lock = NSLock()

    /// Observes `foreground` and `background` notifications on `center`.
    public init(center: NotificationCenter = .default,
                foreground: [Notification.Name] = TernLifecycleObserver.defaultForeground,
                background: [Notification.Name] = TernLifecycleObserver.defaultBackground,
                onForeground: @escaping @Sendable () -> Void,
                onBackground: @escaping @Sendable () -> Void) {
        self.center = center
        queue = OperationQueue()
        queue.name = "dev.tern.lifecycle"
        queue.maxConcurrentOperationCount = 1
        queue.qualityOfService = .utility
        tokens = foreground.map { center.addObserver(forName: $0, object: nil, queue: queue) { _ in onForeground() } }
            + background.map { center.addObserver(forName: $0, object: nil, queue: queue) { _ in onBackground() } }
    }

    /// Stops observing. Idempotent.
    public func stop() {
        lock.lock()
        let t = tokens
        tokens = []
        lock.unlock()
        for token in t { center.removeObserver(token) }
    }

    deinit { stop() }
}

/// `NWPathMonitor` → `report(available)`: the state at `start()` first, then each change,
/// on a background queue.
public final class TernNetworkObserver: @unchecked Sendable {
    private let monitor = NWPathMonitor()
    private let queue = DispatchQueue(label: "dev.tern.network", qos: .utility)
    private let report: @Sendable (Bool) -> Void

    /// Reports reachability (`path.status == .satisfied`) to `report`.
    public init(report: @escaping @Sendable (Bool) -> Void) { self.report = report }

    /// Starts monitoring; the first report is the current state.
    public func start() {
        let report = self.report
        monitor.pathUpdateHandler = { path in report(path.status == .satisfied) }
        monitor.start(queue: queue)
    }

    /// Stops monitoring (a stopped monitor cannot restart: make a new observer).
    public func stop() { monitor.cancel() }
}
