// The idiomatic Swift layer over the generated bindings (module TernFFI).
// Conversions and threading only: every decision is made by the Rust core.
import Foundation
import TernFFI

/// Why a call failed (`invalidConfig`, `invalidEvent`, `optedOut`, `shutDown`,
/// `dataDirInUse`, `storeUnavailable`, `io`, `internal`).
public typealias TernError = TernFFI.TernError
/// A change of remote config values or flag decisions.
public typealias ConfigChange = TernFFI.ConfigChange
/// An in-app message to show now.
public typealias InAppMessage = TernFFI.InAppMessage
/// A flag decision: `.off`, `.on` or `.variant(key:value:)`.
public typealias FlagDecision = TernFFI.FlagDecision
/// Version, ETag and freshness of the config in use.
public typealias ConfigInfo = TernFFI.ConfigInfo
/// State and health counters.
public typealias TernStats = TernFFI.TernStats
/// What `shutdown` achieved.
public typealias ShutdownReport = TernFFI.ShutdownReport

/// A property value: String, Int, Int64, Double, Float or Bool.
public protocol TernPropertyValue {}
extension String: TernPropertyValue {}
extension Int: TernPropertyValue {}
extension Int64: TernPropertyValue {}
extension Int32: TernPropertyValue {}
extension Double: TernPropertyValue {}
extension Float: TernPropertyValue {}
extension Bool: TernPropertyValue {}

/// Settings of `Tern.start`; the core validates them and names the field at fault.
public struct TernConfiguration: Sendable {
    var options: TernFFI.TernOptions

    /// `appId` with its `appKey`, storing data in `dataDirectory`.
    public init(appId: String, appKey: String, dataDirectory: URL) {
        options = TernFFI.TernOptions(
            appId: appId, appKey: appKey, dataDir: dataDirectory.path,
            platform: "ios", sdkName: "tern-swift")
    }

    /// Bootstrap shard map as the JSON document relays serve.
    public func shardMapJSON(_ json: String) -> Self { var c = self; c.options.shardMapJson = json; return c }

    /// Adds a bootstrap relay.
    public func relay(id: String, quicAddr: String, httpsURL: String) -> Self {
        var c = self
        c.options.relays.append(TernFFI.RelayEndpoint(id: id, quicAddr: quicAddr, httpsUrl: httpsURL))
        return c
    }

    /// Trusts `pem` in addition to the built-in roots (or only it).
    public func trustCertificate(pem: String, only: Bool = false) -> Self {
        var c = self; c.options.caPem = pem; c.options.trustOnlyCaPem = only; return c
    }

    /// Cuts a batch at this many events.
    public func maxBatchEvents(_ n: UInt32) -> Self { var c = self; c.options.maxBatchEvents = n; return c }

    /// Sends everything once the oldest unsent event is this old.
    public func maxBatchAge(_ seconds: TimeInterval) -> Self {
        var c = self; c.options.maxBatchAgeMs = UInt64(seconds * 1000); return c
    }

    /// Bound of the device store in bytes.
    public func maxStoreBytes(_ bytes: UInt64) -> Self { var c = self; c.options.maxStoreBytes = bytes; return c }

    /// Session inactivity timeout.
    public func sessionTimeout(_ seconds: TimeInterval) -> Self {
        var c = self; c.options.sessionTimeoutMs = UInt64(seconds * 1000); return c
    }

    /// The host app's version, reported upstream.
    public func appVersion(_ version: String) -> Self { var c = self; c.options.appVersion = version; return c }
}

/// A registered listener; `cancel()` removes it (so does releasing it).
public final class TernSubscription: @unchecked Sendable {
    private let handle: TernFFI.ListenerHandle
    init(_ handle: TernFFI.ListenerHandle) { self.handle = handle }
    /// Removes the listener. Idempotent.
    public func cancel() { handle.cancel() }
    /// Whether it was cancelled.
    public var isCancelled: Bool { handle.isCancelled() }
    deinit { handle.cancel() }
}

private final class ConfigBridge: TernFFI.ConfigChangeListener, @unchecked Sendable {
    let body: (ConfigChange) -> Void
    init(_ body: @escaping (ConfigChange) -> Void) { self.body = body }
    func onConfigChanged(change: ConfigChange) { body(change) }
}

private final class MessageBridge: TernFFI.InAppMessageListener, @unchecked Sendable {
    let body: (InAppMessage) -> Void
    init(_ body: @escaping (InAppMessage) -> Void) { self.body = body }
    func onMessage(message: InAppMessage) { body(message) }
}

/// The Tern SDK. Thread-safe. Recording calls return once the event is durable on the
/// device and never touch the network; they throw `TernError` when the event is
/// refused. Blocking work (`start`, `shutdown`, `awaitApplied`, `flushAndWait`) is `async` and runs off
/// the caller's thread.
public final class Tern: @unchecked Sendable {
    private let core: TernFFI.TernCore

    private init(core: TernFFI.TernCore) { self.core = core }

    /// Starts the SDK off the main thread.
    public static func start(_ configuration: TernConfiguration) async throws -> Tern {
        try await Task.detached(priority: .utility) {
            Tern(core: try TernFFI.TernCore.start(options: configuration.options))
        }.value
    }

    /// Starts the SDK on this thread (creates threads and the data directory: never on
    /// the main thread; `start` and `TernApp.start` run it detached).
    public static func startBlocking(_ configuration: TernConfiguration) throws -> Tern {
        Tern(core: try TernFFI.TernCore.start(options: configuration.options))
    }

    /// The native library's version.
    public static var version: String { TernFFI.ternSdkVersion() }

    /// Records a custom event.
    public func track(_ name: String, properties: [String: TernPropertyValue] = [:]) throws {
        try core.track(name: name, properties: try properties.ffi())
    }

    /// Records a purchase of `amountMicros` millionths of `currency` (ISO 4217).
    public func purchase(productId: String, amountMicros: Int64, currency: String, quantity: UInt32 = 1,
                         properties: [String: TernPropertyValue] = [:]) throws {
        try core.purchase(productId: productId, amountMicros: amountMicros, currency: currency,
                          quantity: quantity, properties: try properties.ffi())
    }

    /// Sets the user of events recorded from now on; `nil` makes them anonymous.
    public func identify(_ userId: String?) throws { try core.identify(userId: userId) }

    /// Sets `set` and removes `unset` user properties.
    public func setUserProperties(_ set: [String: TernPropertyValue], unset: [String] = []) throws {
        try core.setUserProperties(set: try set.ffi(), unset: unset)
    }

    /// Switches recording off (`true`) or back on; persisted across restarts.
    public func optOut(_ optedOut: Bool) throws { try core.optOut(optedOut: optedOut) }
    /// True while opted out.
    public var isOptedOut: Bool { core.isOptedOut() }
    /// Deletes every event recorded before this call, the user id and the device id.
    public func deleteLocalData() throws { try core.deleteLocalData() }
    /// Starts a new session.
    public func startSession() throws { try core.startSession() }
    /// Ends the open session.
    public func endSession() throws { try core.endSession() }
    /// The open session's id.
    public var currentSession: String? { core.currentSession() }
    /// The app came to the foreground (the iOS glue calls this).
    public func didEnterForeground() throws { try core.onForeground() }
    /// The app went to the background: a flush is requested.
    public func didEnterBackground() throws { try core.onBackground() }
    /// Network reachability changed (`NWPathMonitor` glue).
    public func setNetworkAvailable(_ available: Bool) { core.setNetworkAvailable(available: available) }
    /// Asks for everything recorded to be sent soon. Returns at once.
    public func flush() { core.flush() }
    /// Requests a flush and waits, off the caller's thread, until the device store is
    /// empty (everything recorded was uploaded) or `timeout` passes. Returns whether it
    /// emptied. For background work (`TernBackgroundFlush`).
    public func flushAndWait(timeout: TimeInterval = 30) async -> Bool {
        let core = self.core
        return await Task.detached { core.flushAndWait(timeoutMs: UInt64(max(0, timeout) * 1000)) }.value
    }
    /// State and counters. No I/O.
    public func stats() throws -> TernStats { try core.stats() }

    /// The config value of `key` as String, Int64, Double or Bool.
    public func configValue(_ key: String) -> Any? { core.configValue(key: key).map(\.any) }
    /// The text value of `key`, or `default`.
    public func string(_ key: String, default value: String) -> String { core.configString(key: key, default: value) }
    /// The integer value of `key`, or `default`.
    public func int(_ key: String, default value: Int64) -> Int64 { core.configLong(key: key, default: value) }
    /// The number value of `key`, or `default`.
    public func double(_ key: String, default value: Double) -> Double { core.configDouble(key: key, default: value) }
    /// The boolean value of `key`, or `default`.
    public func bool(_ key: String, default value: Bool) -> Bool { core.configBool(key: key, default: value) }
    /// The decision of flag `key`.
    public func flag(_ key: String) -> FlagDecision { core.flag(key: key) }
    /// True when flag `key` is not `.off`.
    public func isEnabled(_ key: String) -> Bool { core.flagEnabled(key: key) }
    /// Version, ETag and freshness of the config in use.
    public var configInfo: ConfigInfo { core.configInfo() }
    /// Asks for the config to be fetched now. Returns at once.
    public func refreshConfig() { core.refreshConfig() }

    /// Calls `body` on the SDK's `tern-live` thread for every config change.
    public func onConfigChange(_ body: @escaping (ConfigChange) -> Void) throws -> TernSubscription {
        TernSubscription(try core.addConfigListener(listener: ConfigBridge(body)))
    }

    /// Calls `body` with each in-app message to show.
    public func onMessage(_ body: @escaping (InAppMessage) -> Void) throws -> TernSubscription {
        TernSubscription(try core.addMessageListener(listener: MessageBridge(body)))
    }

    /// Config changes; the listener is removed when iteration ends.
    public var configChanges: AsyncStream<ConfigChange> {
        AsyncStream(bufferingPolicy: .bufferingNewest(64)) { continuation in
            let sub = try? self.onConfigChange { continuation.yield($0) }
            continuation.onTermination = { _ in sub?.cancel() }
        }
    }

    /// In-app messages to show.
    public var messages: AsyncStream<InAppMessage> {
        AsyncStream(bufferingPolicy: .bufferingNewest(64)) { continuation in
            let sub = try? self.onMessage { continuation.yield($0) }
            continuation.onTermination = { _ in sub?.cancel() }
        }
    }

    /// Records that the user acted on a message (`action` = the button id).
    public func messageImpression(messageId: String, action: String) throws {
        try core.messageImpression(messageId: messageId, action: action)
    }

    /// Waits until everything recorded is in the device store.
    public func awaitApplied(timeout: TimeInterval = 5) async -> Bool {
        let core = self.core
        return await Task.detached { core.waitApplied(timeoutMs: UInt64(timeout * 1000)) }.value
    }

    /// Stops recording and closes the store, waiting at most `timeout`. Idempotent.
    @discardableResult
    public func shutdown(timeout: TimeInterval = 5) async throws -> ShutdownReport {
        let core = self.core
        return try await Task.detached { try core.shutdown(timeoutMs: UInt64(timeout * 1000)) }.value
    }
}

extension Dictionary where Key == String, Value == TernPropertyValue {
    func ffi() throws -> [String: TernFFI.PropertyValue] {
        try mapValues { v in
            switch v {
            case let s as String: return .text(value: s)
            case let b as Bool: return .bool(value: b)
            case let i as Int: return .integer(value: Int64(i))
            case let i as Int64: return .integer(value: i)
            case let i as Int32: return .integer(value: Int64(i))
            case let d as Double: return .real(value: d)
            case let f as Float: return .real(value: Double(f))
            default:
                throw TernFFI.TernError.InvalidEvent(field: "property", reason: "unsupported type \(type(of: v))")
            }
        }
    }
}

extension TernFFI.PropertyValue {
    var any: Any {
        switch self {
        case .text(let v): return v
        case .integer(let v): return v
        case .real(let v): return v
        case .bool(let v): return v
        }
    }
}
