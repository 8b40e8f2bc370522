// The app-side entry of Tern on Apple platforms: hands the app an instance at once,
// opens it off the main thread with the platform defaults (data directory, app version,
// platform), and attaches the glue — the lifecycle (TernLifecycle.swift, adapted here to
// UIApplication / NSApplication), NWPathMonitor, and on iOS the BGTaskScheduler flush.
// Threading and wiring only: every decision is made by the Rust core.
import Foundation
@preconcurrency import Network
#if canImport(UIKit) && !os(watchOS)
import UIKit
#elseif canImport(AppKit)
import AppKit
#endif

/// What `TernApp.start` attaches besides the SDK. Every part is on by default.
public struct TernAppOptions: Sendable {
    /// Data directory; `nil` = `TernApp.defaultDataDirectory()`.
    public var dataDirectory: URL?
    /// App lifecycle → `didEnterForeground()` / `didEnterBackground()`, with the state
    /// read at start (a session starts on a cold launch in the foreground) and, on iOS,
    /// each background upload wrapped in a background task.
    public var lifecycle: Bool
    /// `NWPathMonitor` → `setNetworkAvailable` (with the state at start).
    public var network: Bool
    /// The device context: bundle build, OS, model, screen, locale and time zone given at
    /// start; locale and time-zone change notifications → `setLocale`/`setTimeZone`; the
    /// path's interface (with `network`) → `setNetworkType`.
    public var deviceContext: Bool
    /// On iOS: submit the `BGTaskScheduler` flush request each time the app goes to the
    /// background (needs `TernBackgroundFlush.register()` at launch and the Info.plist
    /// entries, see the README).
    public var backgroundFlush: Bool
    /// Longest wait for the upload inside the background task begun when the app goes to
    /// the background, seconds (the system's expiration ends it earlier when it must).
    public var backgroundUploadTimeout: TimeInterval
    /// Receives every refused call (its name and why) — including a failed open, e.g.
    /// `DataDirInUse` when another process holds the data directory. Runs on the thread
    /// of the call; keep it quick.
    public var onError: (@Sendable (_ call: String, _ error: TernError) -> Void)?

    /// Every part on, the default data directory, no error handler.
    public init(dataDirectory: URL? = nil, lifecycle: Bool = true, network: Bool = true, backgroundFlush: Bool = true,
                backgroundUploadTimeout: TimeInterval = 25, deviceContext: Bool = true,
                onError: (@Sendable (_ call: String, _ error: TernError) -> Void)? = nil) {
        self.dataDirectory = dataDirectory
        self.deviceContext = deviceContext
        self.lifecycle = lifecycle
        self.network = network
        self.backgroundFlush = backgroundFlush
        self.backgroundUploadTimeout = backgroundUploadTimeout
        self.onError = onError
    }
}

/// Tern in an app: call `start` once, early (`application(_:didFinishLaunchingWithOptions:)`
/// or the SwiftUI `App`'s `init`); it returns the instance at once.
public enum TernApp {
    private static let state = AppState()

    /// `Application Support/tern` of the app's container (computed only, no disk access;
    /// the open creates it off the main thread and excludes it from backups — the device
    /// id and the queued events must not be restored onto another device). Each process
    /// has its own container, app extensions included: one process, one data directory.
    public static func defaultDataDirectory() -> URL {
        let base = FileManager.default.urls(for: .applicationSupportDirectory, in: .userDomainMask).first
            ?? FileManager.default.temporaryDirectory
        return base.appendingPathComponent("tern", isDirectory: true)
    }

    /// Returns the SDK at once — every call on it is accepted from now on — and opens it
    /// on a background queue with the data directory of `options`, the app's
    /// `CFBundleShortVersionString` and `TernPlatform.current`, then `configure`
    /// (relays, batching, ...); attaches the glue of `options`. Safe on the main thread.
    /// When an instance is already running, returns it unchanged.
    ///
    /// A failed open (`InvalidConfig` naming the field, `DataDirInUse`, ...) is logged
    /// (`TernLog`), handed to `options.onError`, and leaves the instance unavailable:
    /// every call on it is then a counted no-op (`stats().state == .unavailable`).
    @discardableResult
    public static func start(appId: String, appKey: String, options: TernAppOptions = TernAppOptions(),
                             configure: (TernConfiguration) -> TernConfiguration = { $0 }) -> Tern {
        state.startOnce {
            let tern = Tern()
            if let onError = options.onError { tern.setErrorHandler(onError) }
            let dir = options.dataDirectory ?? defaultDataDirectory()
            var config = TernConfiguration(appId: appId, appKey: appKey, dataDirectory: dir)
            if let version = Bundle.main.infoDictionary?["CFBundleShortVersionString"] as? String {
                config = config.appVersion(version)
            }
            if options.deviceContext { config = config.context(TernDeviceInfo.current()) }
            config = configure(config)
            let glue = TernGlue(tern: tern, options: options)
            let ready = config
            TernBlocking.queue.async {
                TernApp.prepare(dir)
                // A failure is returned here, and also logged, reported and counted by
                // the core; the instance stays safe to use.
                try? tern.openBlocking(ready)
            }
            return (tern: tern, glue: glue)
        }
    }

    /// The instance `start` returned, until `stop`.
    public static var current: Tern? { state.current }

    /// Waits, at most `timeout` seconds, until the current instance is open and running;
    /// `nil` when none was started by then, when its open failed, or when the calling
    /// task is cancelled.
    public static func awaitStarted(timeout: TimeInterval) async -> Tern? {
        let deadline = TernDeadline(after: timeout)
        while true {
            if let tern = state.current {
                switch tern.state {
                case .running: return tern
                case .unavailable, .stopped: return nil
                case .notStarted: break
                }
            }
            if deadline.passed || Task.isCancelled { return nil }
            try? await Task.sleep(nanoseconds: 20_000_000)
        }
    }

    /// Waits, at most `timeout` seconds, until `start` was called (the instance may still
    /// be opening: its `flushAndWait` waits for the open itself).
    static func awaitCurrent(timeout: TimeInterval) async -> Tern? {
        let deadline = TernDeadline(after: timeout)
        while true {
            if let tern = state.current { return tern }
            if deadline.passed || Task.isCancelled { return nil }
            try? await Task.sleep(nanoseconds: 20_000_000)
        }
    }

    /// Detaches the glue and shuts the SDK down (waiting at most `timeout` seconds).
    /// Returns `nil` when it was not running. References the app still holds stay safe
    /// (their calls become counted no-ops). A later `start` starts a new instance.
    @discardableResult
    public static func stop(timeout: TimeInterval = 5) async -> ShutdownReport? {
        guard let running = state.take() else { return nil }
        await running.glue.stop()
        return await running.tern.shutdown(timeout: timeout)
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

    /// The application object of this process, on the main actor (`nil` without one).
    @MainActor
    static func platformApplication() -> TernApplication? {
        #if canImport(UIKit) && !os(watchOS)
        return UIKitApplication(UIApplication.shared)
        #elseif canImport(AppKit)
        return NSApp == nil ? nil : AppKitApplication()
        #else
        return nil
        #endif
    }

    /// The lifecycle notifications of this platform.
    @MainActor
    static var platformNotifications: TernLifecycleNotifications {
        #if canImport(UIKit) && !os(watchOS)
        return TernLifecycleNotifications(
            didFinishLaunching: [UIApplication.didFinishLaunchingNotification],
            didBecomeActive: [UIApplication.didBecomeActiveNotification],
            willEnterForeground: [UIApplication.willEnterForegroundNotification],
            didEnterBackground: [UIApplication.didEnterBackgroundNotification])
        #elseif canImport(AppKit)
        // A Mac app is in the foreground while it runs: a session starts at launch and
        // on activation; the core ends it after the inactivity timeout.
        return TernLifecycleNotifications(
            didFinishLaunching: [NSApplication.didFinishLaunchingNotification],
            didBecomeActive: [NSApplication.didBecomeActiveNotification])
        #else
        return TernLifecycleNotifications()
        #endif
    }

    /// What to do on each move to the background besides the SDK call.
    static func backgroundHook(scheduleRefresh: Bool) -> @Sendable () -> Void {
        #if os(iOS) || os(visionOS)
        return { if scheduleRefresh { TernBackgroundFlush.schedule() } }
        #else
        return {}
        #endif
    }
}

#if canImport(UIKit) && !os(watchOS)
/// `UIApplication` as the lifecycle glue's application object.
@MainActor
final class UIKitApplication: TernApplication {
    private let app: UIApplication

    init(_ app: UIApplication) { self.app = app }

    var isInBackground: Bool { app.applicationState == .background }

    func beginBackgroundTask(name: String, expiration: @escaping @MainActor @Sendable () -> Void) -> TernBackgroundTaskID? {
        let id = app.beginBackgroundTask(withName: name) { expiration() }
        return id == .invalid ? nil : TernBackgroundTaskID(rawValue: id.rawValue)
    }

    func endBackgroundTask(_ id: TernBackgroundTaskID) {
        app.endBackgroundTask(UIBackgroundTaskIdentifier(rawValue: id.rawValue))
    }
}
#elseif canImport(AppKit)
/// `NSApplication` as the lifecycle glue's application object: always in the
/// foreground, no background tasks (a Mac app is not suspended in the background).
@MainActor
final class AppKitApplication: TernApplication {
    var isInBackground: Bool { false }
    func beginBackgroundTask(name: String, expiration: @escaping @MainActor @Sendable () -> Void) -> TernBackgroundTaskID? { nil }
    func endBackgroundTask(_ id: TernBackgroundTaskID) {}
}
#endif

/// The running instance and its glue.
///
/// `@unchecked Sendable`: `running` is read and written under `lock` only.
private final class AppState: @unchecked Sendable {
    private let lock = NSLock()
    private var running: (tern: Tern, glue: TernGlue)?

    var current: Tern? { lock.lock(); defer { lock.unlock() }; return running?.tern }

    func startOnce(_ make: () -> (tern: Tern, glue: TernGlue)) -> Tern {
        lock.lock()
        defer { lock.unlock() }
        if let r = running { return r.tern }
        let made = make()
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
final class TernGlue: Sendable {
    private let network: TernNetworkObserver?
    private let locale: TernLocaleObserver?
    /// Made on the main actor, where the application object lives.
    private let lifecycle: Task<TernLifecycleGlue, Never>?

    init(tern: Tern, options: TernAppOptions) {
        if options.network {
            var reportType: (@Sendable (TernNetworkType) -> Void)?
            if options.deviceContext {
                reportType = { type in tern.setNetworkType(type) }
            }
            let observer = TernNetworkObserver(
                report: { available in tern.setNetworkAvailable(available) },
                reportType: reportType)
            observer.start()
            network = observer
        } else {
            network = nil
        }
        if options.deviceContext {
            let observer = TernLocaleObserver(target: tern)
            observer.start()
            locale = observer
        } else {
            locale = nil
        }
        if options.lifecycle {
            let timeout = options.backgroundUploadTimeout
            let hook = TernApp.backgroundHook(scheduleRefresh: options.backgroundFlush)
            lifecycle = Task { @MainActor in
                let glue = TernLifecycleGlue(target: tern, application: { TernApp.platformApplication() },
                                             center: .default, names: TernApp.platformNotifications,
                                             uploadTimeout: timeout, onBackground: hook)
                glue.attach()
                return glue
            }
        } else {
            lifecycle = nil
        }
    }

    /// Detaches everything.
    func stop() async {
        network?.stop()
        locale?.stop()
        if let task = lifecycle {
            let glue = await task.value
            await glue.stop()
        }
    }
}

/// `NWPathMonitor` → `report(available)`: the state at `start()` first, then each change,
/// on a background queue. (`NWPathMonitor` is `Sendable` in current SDKs; older ones
/// predate the annotation, hence the `@preconcurrency` import.)
public final class TernNetworkObserver: Sendable {
    private let monitor = NWPathMonitor()
    private let queue = DispatchQueue(label: "dev.tern.network", qos: .utility)
    private let report: @Sendable (Bool) -> Void
    private let reportType: (@Sendable (TernNetworkType) -> Void)?

    /// Reports reachability (`path.status == .satisfied`) to `report` and, when given,
    /// the kind of network (`.wifi`, `.cellular`, ...; `.none` when unreachable) to
    /// `reportType`.
    public init(report: @escaping @Sendable (Bool) -> Void,
                reportType: (@Sendable (TernNetworkType) -> Void)? = nil) {
        self.report = report
        self.reportType = reportType
    }

    /// Starts monitoring; the first report is the current state.
    public func start() {
        let (report, reportType) = (self.report, self.reportType)
        monitor.pathUpdateHandler = { path in
            report(path.status == .satisfied)
            reportType?(TernDeviceInfo.networkType(of: path))
        }
        monitor.start(queue: queue)
    }

    /// Stops monitoring (a stopped monitor cannot restart: make a new observer).
    public func stop() { monitor.cancel() }
}
