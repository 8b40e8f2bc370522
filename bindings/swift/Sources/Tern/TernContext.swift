// The device context on Apple platforms: what the app and the device are at start
// (bundle build, OS, model, screen, locale, time zone), the locale and time-zone change
// notifications, and the kind of network NWPathMonitor reports. Wiring only: the core
// keeps the context, splits batches by it and records the lifecycle events.
import Foundation
@preconcurrency import Network
#if canImport(UIKit) && !os(watchOS)
import UIKit
#endif

/// The calls the context glue makes (the SDK, or a test's fake).
protocol TernContextTarget: AnyObject, Sendable {
    func setLocale(_ locale: String?)
    func setTimeZone(_ timeZone: String?)
}

extension Tern: TernContextTarget {}

/// The device context read from the platform.
enum TernDeviceInfo {
    /// The locale (BCP 47) and the time zone (IANA name) now.
    static func localeAndTimeZone() -> (String?, String?) {
        let locale = Locale.current.identifier.replacingOccurrences(of: "_", with: "-")
        return (locale.isEmpty ? nil : locale, TimeZone.current.identifier)
    }

    /// The hardware model identifier (`iPhone15,2`, `MacBookPro18,3`).
    static func model() -> String? {
        var info = utsname()
        uname(&info)
        let model = withUnsafeBytes(of: &info.machine) { raw in
            String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
        }
        return model.isEmpty ? nil : model
    }

    /// What the app and the device are at start. Reads `UIScreen` on the main thread only
    /// (elsewhere the screen is left unknown).
    static func current() -> DeviceContext {
        let (locale, timeZone) = localeAndTimeZone()
        let os = ProcessInfo.processInfo.operatingSystemVersion
        var width: UInt32?
        var height: UInt32?
        #if canImport(UIKit) && !os(watchOS) && !os(visionOS)
        if Thread.isMainThread {
            let bounds = MainActor.assumeIsolated { UIScreen.main.nativeBounds }
            width = UInt32(exactly: bounds.width.rounded())
            height = UInt32(exactly: bounds.height.rounded())
        }
        #endif
        return DeviceContext(
            appBuild: Bundle.main.infoDictionary?["CFBundleVersion"] as? String,
            osName: TernPlatform.current,
            osVersion: "\(os.majorVersion).\(os.minorVersion).\(os.patchVersion)",
            deviceModel: model(),
            screenWidth: width,
            screenHeight: height,
            locale: locale,
            timeZone: timeZone,
            networkType: nil)
    }

    /// The kind of network of a path: `.none` when it is not satisfied.
    static func networkType(satisfied: Bool, wifi: Bool, cellular: Bool, ethernet: Bool) -> TernNetworkType {
        if !satisfied { return TernNetworkType.none }
        if wifi { return TernNetworkType.wifi }
        if cellular { return TernNetworkType.cellular }
        if ethernet { return TernNetworkType.ethernet }
        return TernNetworkType.unknown
    }

    /// `networkType` of an `NWPath`.
    static func networkType(of path: NWPath) -> TernNetworkType {
        networkType(satisfied: path.status == .satisfied, wifi: path.usesInterfaceType(.wifi),
                    cellular: path.usesInterfaceType(.cellular), ethernet: path.usesInterfaceType(.wiredEthernet))
    }
}

/// Locale and time-zone changes → `setLocale` / `setTimeZone`, read by `read` when a
/// change notification arrives on `center` (`NSLocale.currentLocaleDidChangeNotification`,
/// `.NSSystemTimeZoneDidChange`). Calls the target on its own queue.
final class TernLocaleObserver: @unchecked Sendable {
    private let target: TernContextTarget
    private let center: NotificationCenter
    private let read: @Sendable () -> (String?, String?)
    private let queue = DispatchQueue(label: "dev.tern.context", qos: .utility)
    private let lock = NSLock()
    private var tokens: [NSObjectProtocol] = []

    init(target: TernContextTarget, center: NotificationCenter = .default,
         read: @escaping @Sendable () -> (String?, String?) = { TernDeviceInfo.localeAndTimeZone() }) {
        self.target = target
        self.center = center
        self.read = read
    }

    /// Observes both notifications.
    func start() {
        let names = [NSLocale.currentLocaleDidChangeNotification, Notification.Name.NSSystemTimeZoneDidChange]
        let added = names.map { name in
            center.addObserver(forName: name, object: nil, queue: nil) { [weak self] _ in self?.changed() }
        }
        lock.lock()
        tokens += added
        lock.unlock()
    }

    /// Stops observing.
    func stop() {
        lock.lock()
        let old = tokens
        tokens = []
        lock.unlock()
        for token in old { center.removeObserver(token) }
    }

    /// Waits until the calls made so far reached the target (tests).
    func drain() { queue.sync {} }

    private func changed() {
        let (target, read) = (self.target, self.read)
        queue.async {
            let (locale, timeZone) = read()
            target.setLocale(locale)
            target.setTimeZone(timeZone)
        }
    }
}
