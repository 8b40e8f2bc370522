// The idiomatic Swift layer over the generated bindings (module TernFFI).
// Conversions and threading only: every decision and every count is made by the Rust
// core (bindings/README.md, "API contract (both platforms)").
import Foundation
@preconcurrency import TernFFI

/// Why a call was refused (`InvalidConfig`, `InvalidEvent`, `OptedOut`, `ShutDown`,
/// `DataDirInUse`, `StoreUnavailable`, `Io`, `NotStarted`, `Internal`).
public typealias TernError = TernFFI.TernError

/// A change of remote config values or flag decisions.
public typealias ConfigChange = TernFFI.ConfigChange

/// An in-app message to show now.
public typealias InAppMessage = TernFFI.InAppMessage

/// A button of an in-app message.
public typealias MessageAction = TernFFI.MessageAction

/// A flag decision: `.off`, `.on` or `.variant(key:value:)`.
public typealias FlagDecision = TernFFI.FlagDecision

/// What `tryRecordExposure` did.
public typealias ExposureOutcome = TernFFI.ExposureOutcome

/// What the app and the device are at start (`TernConfiguration.context`).
public typealias DeviceContext = TernFFI.DeviceContext

/// The kind of network the device is on (`Tern.setNetworkType`).
public typealias TernNetworkType = TernFFI.TernNetworkType

/// Version, ETag and freshness of the config in use.
public typealias ConfigInfo = TernFFI.ConfigInfo

/// State and health counters.
public typealias TernStats = TernFFI.TernStats

/// A purpose the person using the app consents to separately: `.analytics`, `.messaging`.
public typealias ConsentPurpose = TernFFI.ConsentPurpose

/// The consent state of a purpose: `.granted`, `.denied`, `.pending`.
public typealias ConsentState = TernFFI.ConsentState

/// What `shutdown` achieved.
public typealias ShutdownReport = TernFFI.ShutdownReport

/// Where an instance is in its life cycle: `.notStarted`, `.running`, `.unavailable`
/// (opening failed), `.stopped`.
public typealias TernState = TernFFI.TernState
/// Who delivers push notifications to the device: `.fcm`, `.apns`.
public typealias PushProvider = TernFFI.PushProvider
/// The APNs environment of a device token: `.sandbox`, `.production`.
public typealias PushEnvironment = TernFFI.PushEnvironment

/// A property value: String, Bool, a fixed-width integer up to 64 bits signed (Int,
/// Int8...Int64, UInt8...UInt32), Double or Float. A type conformed to it elsewhere
/// (say `Date`) is passed on as unsupported: the event is refused as `InvalidEvent`
/// naming the property, and counted (`stats().droppedInvalid`).
public protocol TernPropertyValue {}
extension String: TernPropertyValue {}
extension Bool: TernPropertyValue {}
extension Int: TernPropertyValue {}
extension Int8: TernPropertyValue {}
extension Int16: TernPropertyValue {}
extension Int32: TernPropertyValue {}
extension Int64: TernPropertyValue {}
extension UInt8: TernPropertyValue {}
extension UInt16: TernPropertyValue {}
extension UInt32: TernPropertyValue {}
extension Double: TernPropertyValue {}
extension Float: TernPropertyValue {}

/// Settings of `Tern.open` / `Tern.start`; the core validates them and names the field
/// at fault (`TernError.InvalidConfig`).
public struct TernConfiguration: Sendable {
    var options: TernFFI.TernOptions

    /// `appId` with its `appKey`, storing data in `dataDirectory`; platform
    /// `TernPlatform.current`.
    public init(appId: String, appKey: String, dataDirectory: URL) {
        options = TernFFI.TernOptions(
            appId: appId, appKey: appKey, dataDir: dataDirectory.path,
            platform: TernPlatform.current, sdkName: "tern-swift", autoLifecycle: true)
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

    /// Sends everything once the oldest unsent event is this old (seconds; clamped: a
    /// negative value is 0, an infinite or NaN one the largest; the core validates the
    /// result).
    public func maxBatchAge(_ seconds: TimeInterval) -> Self {
        var c = self; c.options.maxBatchAgeMs = TernTime.milliseconds(seconds); return c
    }

    /// Bound of the device store in bytes.
    public func maxStoreBytes(_ bytes: UInt64) -> Self { var c = self; c.options.maxStoreBytes = bytes; return c }

    /// Session inactivity timeout (seconds; clamped like `maxBatchAge`).
    public func sessionTimeout(_ seconds: TimeInterval) -> Self {
        var c = self; c.options.sessionTimeoutMs = TernTime.milliseconds(seconds); return c
    }

    /// Whether reading a flag (`flag`, `isEnabled`) records its exposure (default on).
    /// Off: only `recordExposure` records exposures.
    public func autoExposures(_ enabled: Bool) -> Self { var c = self; c.options.autoExposures = enabled; return c }

    /// The app and device at start: build, OS, model, screen, and the first locale, time
    /// zone and network (`TernApp` fills it). Later changes: `Tern.setNetworkType`,
    /// `setLocale`, `setTimeZone`.
    public func context(_ context: DeviceContext) -> Self { var c = self; c.options.context = context; return c }

    /// Whether the SDK records `app_installed`, `app_updated` (with the previous version)
    /// and `app_opened` by itself (default on).
    public func autoLifecycle(_ enabled: Bool) -> Self { var c = self; c.options.autoLifecycle = enabled; return c }

    /// The consent state of every purpose until the app first sets it with `setConsent`
    /// (default `.granted`); once set, the stored state wins.
    public func defaultConsent(_ state: ConsentState) -> Self { var c = self; c.options.defaultConsent = state; return c }

    /// Most events kept on the device while consent is pending (default 1000, oldest
    /// dropped).
    public func maxPendingEvents(_ n: UInt64) -> Self { var c = self; c.options.maxPendingEvents = n; return c }
    /// How old the last recorded push token may get before it is recorded again (seconds;
    /// default 7 days).
    public func pushRefreshInterval(_ seconds: TimeInterval) -> Self {
        var c = self; c.options.pushRefreshIntervalMs = TernTime.milliseconds(seconds); return c
    }

    /// The platform reported upstream and matched by message targeting (default
    /// `TernPlatform.current`).
    public func platform(_ platform: String) -> Self { var c = self; c.options.platform = platform; return c }

    /// The host app's version, reported upstream.
    public func appVersion(_ version: String) -> Self { var c = self; c.options.appVersion = version; return c }

    /// Longest QUIC handshake or HTTPS connect to a relay before the next try (seconds,
    /// clamped like `maxBatchAge`; default 3 s; the core refuses 0 and more than 60 s).
    public func connectTimeout(_ seconds: TimeInterval) -> Self {
        var c = self; c.options.connectTimeoutMs = TernTime.milliseconds(seconds); return c
    }

    /// Longest wait for a relay's reply (seconds, clamped like `maxBatchAge`; default 10 s;
    /// the core refuses 0 and more than 10 min).
    public func requestTimeout(_ seconds: TimeInterval) -> Self {
        var c = self; c.options.requestTimeoutMs = TernTime.milliseconds(seconds); return c
    }

    /// The longest first wait after a failed upload; each further failure doubles it, up
    /// to 5 min (seconds, clamped like `maxBatchAge`; default 1 s; the core refuses 0 and
    /// more than 5 min).
    public func retryBackoff(_ seconds: TimeInterval) -> Self {
        var c = self; c.options.retryBaseMs = TernTime.milliseconds(seconds); return c
    }

    /// How long a relay that failed over QUIC is used over HTTPS before QUIC is tried
    /// again (seconds, clamped like `maxBatchAge`; default 5 min; the core refuses 0 and
    /// more than 24 h).
    public func quicReprobe(_ seconds: TimeInterval) -> Self {
        var c = self; c.options.quicReprobeMs = TernTime.milliseconds(seconds); return c
    }

    /// Recorded events reach the device store at most this long after the first of them,
    /// in one transaction (seconds, clamped like `maxBatchAge`; default 1 s; zero applies
    /// each at once; the core refuses more than 5 s).
    public func applyDelay(_ seconds: TimeInterval) -> Self {
        var c = self; c.options.applyDelayMs = TernTime.milliseconds(seconds); return c
    }

    /// The local IP address (`127.1.0.7`, `::1`) the SDK's QUIC and HTTPS sockets send
    /// from; text that is not one is refused on `open` (`InvalidConfig`, field
    /// `local_address`). For simulators and tests that give each device its own source
    /// address: apps leave it unset.
    public func localAddress(_ address: String) -> Self {
        var c = self; c.options.localAddress = address; return c
    }
}

/// A registered listener. It stays registered until `cancel()` or the instance's
/// `shutdown` — releasing the subscription does not remove it (the same rule on every
/// platform).
public final class TernSubscription: Sendable {
    private let handle: TernFFI.ListenerHandle
    init(_ handle: TernFFI.ListenerHandle) { self.handle = handle }

    /// Removes the listener; no new call to it starts after this returns. Idempotent.
    public func cancel() { handle.cancel() }

    /// Whether it was cancelled (or the instance stopped).
    public var isCancelled: Bool { handle.isCancelled() }
}

private final class ConfigBridge: TernFFI.ConfigChangeListener {
    let body: @Sendable (ConfigChange) -> Void
    init(_ body: @escaping @Sendable (ConfigChange) -> Void) { self.body = body }
    func onConfigChanged(change: ConfigChange) { body(change) }
}

private final class MessageBridge: TernFFI.InAppMessageListener {
    let body: @Sendable (InAppMessage) -> Void
    init(_ body: @escaping @Sendable (InAppMessage) -> Void) { self.body = body }
    func onMessage(message: InAppMessage) { body(message) }
}

private final class ErrorBridge: TernFFI.ErrorListener {
    let body: @Sendable (String, TernError) -> Void
    init(_ body: @escaping @Sendable (String, TernError) -> Void) { self.body = body }
    func onError(call: String, error: TernError) { body(call, error) }
}

/// The Tern SDK. Thread-safe. Only the `try` forms and the explicit opens (`open`,
/// `start` and their blocking variants) throw; nothing else does, in any state.
///
/// - An instance made with `Tern()` accepts every call at once: recording calls made
///   before `open` are kept (bounded) and applied in order when it opens.
/// - Recording calls (`track`, `purchase`, ...) return once the event is durable on the
///   device, never touch the network and never throw: a refused call is counted in
///   `stats()`, logged (`TernLog`) and handed to the error handler. The `try` forms
///   (`tryTrack`, ...) throw the same refusal as a `TernError`.
/// - After `shutdown` every call is a counted no-op and every reference stays safe.
/// - Blocking work (`open`, `shutdown`, `awaitApplied`) runs on a dedicated dispatch
///   queue, never on the caller's thread nor on Swift's cooperative pool;
///   `flushAndWait` waits on a helper thread of the core. All are `async` and the waits
///   end when their task is cancelled.
public final class Tern: Sendable {
    let core: TernFFI.TernCore

    /// A new instance, not started: no I/O, no threads; safe on the main thread. Calls
    /// made before `open` are kept (up to 1000 calls / 1 MiB; more are refused with
    /// `NotStarted` and counted) and applied, in order and with their time, when it opens.
    public init() { core = TernFFI.TernCore() }

    /// Opens the instance with `configuration` on the blocking queue: validates it,
    /// creates the data directory and takes its lock (a second process on it gets
    /// `DataDirInUse`), starts the core's threads, then applies the calls made so far.
    /// On failure the instance is unavailable for good (calls become counted no-ops);
    /// the reason is thrown, logged and reported to the error handler. Calling it again
    /// returns the first outcome. Not cancellable (it is quick).
    public func open(_ configuration: TernConfiguration) async throws {
        let core = self.core
        let options = configuration.options
        if let error = await TernBlocking.run({ Tern.openCore(core, options) }) { throw error }
    }

    /// `open` on this thread (a few system calls: not on the main thread).
    public func openBlocking(_ configuration: TernConfiguration) throws {
        if let error = Tern.openCore(core, configuration.options) { throw error }
    }

    private static func openCore(_ core: TernFFI.TernCore, _ options: TernFFI.TernOptions) -> TernError? {
        do {
            try core.open(options: options)
            return nil
        } catch let error as TernError {
            return error
        } catch {
            return TernError.Internal(call: "open", detail: "\(error)")
        }
    }

    /// A new instance, opened (`Tern()` then `open`). Throws the reason it could not open.
    public static func start(_ configuration: TernConfiguration) async throws -> Tern {
        let tern = Tern()
        try await tern.open(configuration)
        return tern
    }

    /// `start` on this thread (not on the main thread).
    public static func startBlocking(_ configuration: TernConfiguration) throws -> Tern {
        let tern = Tern()
        try tern.openBlocking(configuration)
        return tern
    }

    /// The native library's version.
    public static var version: String { TernFFI.ternSdkVersion() }

    /// Where the instance is in its life cycle.
    public var state: TernState { core.state() }

    /// Calls `handler` with every refused call from now on (replacing an earlier
    /// handler): the call's name and why. It runs on the thread that made the call (for
    /// calls kept before `open`: the thread that opened); calls into Tern from inside it
    /// are not reported again; keep it quick.
    public func setErrorHandler(_ handler: @escaping @Sendable (_ call: String, _ error: TernError) -> Void) {
        core.setErrorListener(listener: ErrorBridge(handler))
    }

    /// Removes the error handler.
    public func clearErrorHandler() { core.clearErrorListener() }

    // MARK: Recording (never throws) and its `try` forms

    /// Records a custom event.
    public func track(_ name: String, properties: [String: TernPropertyValue] = [:]) {
        core.track(name: name, properties: Tern.ffi(properties))
    }

    /// `track`, throwing a refusal.
    public func tryTrack(_ name: String, properties: [String: TernPropertyValue] = [:]) throws {
        try core.tryTrack(name: name, properties: Tern.ffi(properties))
    }

    /// Records a purchase of `amountMicros` millionths of `currency` (ISO 4217).
    public func purchase(productId: String, amountMicros: Int64, currency: String, quantity: UInt32 = 1,
                         properties: [String: TernPropertyValue] = [:]) {
        // numericCast: UInt32 widens losslessly to the generated quantity type.
        core.purchase(productId: productId, amountMicros: amountMicros, currency: currency,
                      quantity: numericCast(quantity), properties: Tern.ffi(properties))
    }

    /// `purchase`, throwing a refusal.
    public func tryPurchase(productId: String, amountMicros: Int64, currency: String, quantity: UInt32 = 1,
                            properties: [String: TernPropertyValue] = [:]) throws {
        try core.tryPurchase(productId: productId, amountMicros: amountMicros, currency: currency,
                             quantity: numericCast(quantity), properties: Tern.ffi(properties))
    }

    /// Sets the user of events recorded from now on; `nil` makes them anonymous.
    public func identify(_ userId: String?) { core.identify(userId: userId) }

    /// `identify`, throwing a refusal.
    public func tryIdentify(_ userId: String?) throws { try core.tryIdentify(userId: userId) }

    /// Login: links this device's anonymous identity to `userId` (one `alias` event, so
    /// the backend merges the anonymous history into the user's), then identifies
    /// `userId`. `identify` alone records no alias. Call it once per login.
    public func alias(_ userId: String) { core.alias(userId: userId) }

    /// `alias`, throwing a refusal.
    public func tryAlias(_ userId: String) throws { try core.tryAlias(userId: userId) }

    /// Logout: ends the session, forgets the user and the user properties, and gives the
    /// device a new anonymous id (the device id is kept).
    public func reset() { core.reset() }

    /// `reset`, throwing a refusal.
    public func tryReset() throws { try core.tryReset() }

    /// The anonymous id the device store has applied so far; `nil` before the SDK opened.
    public var anonymousId: String? { core.anonymousId() }

    /// The platform's network callback: the kind of network now (`nil`: unknown). Events
    /// recorded from now on carry it in their batch's context; an unchanged value records
    /// nothing. `TernApp` calls it from its `NWPathMonitor`.
    public func setNetworkType(_ network: TernNetworkType?) { core.setNetworkType(network: network) }

    /// `setNetworkType`, throwing a refusal.
    public func trySetNetworkType(_ network: TernNetworkType?) throws { try core.trySetNetworkType(network: network) }

    /// The locale changed (BCP 47 tag, `nil`: unknown); `TernApp` calls it.
    public func setLocale(_ locale: String?) { core.setLocale(locale: locale) }

    /// `setLocale`, throwing a refusal.
    public func trySetLocale(_ locale: String?) throws { try core.trySetLocale(locale: locale) }

    /// The time zone changed (IANA name, `nil`: unknown); `TernApp` calls it.
    public func setTimeZone(_ timeZone: String?) { core.setTimeZone(timeZone: timeZone) }

    /// `setTimeZone`, throwing a refusal.
    public func trySetTimeZone(_ timeZone: String?) throws { try core.trySetTimeZone(timeZone: timeZone) }

    /// This installation's id (kept across app updates); `nil` before the SDK opened.
    public var installId: String? { core.installId() }

    /// Sets the consent state of `purpose`: `.granted` sends the events held while it was
    /// pending (in recorded order); `.denied` deletes them and keeps none later (the calls
    /// still succeed, counted in the stats); `.pending` keeps them on the device, bounded.
    /// Ordered with the other calls, durable, persisted.
    public func setConsent(_ purpose: ConsentPurpose, _ state: ConsentState) {
        core.setConsent(purpose: purpose, state: state)
    }

    /// `setConsent`, throwing a refusal.
    public func trySetConsent(_ purpose: ConsentPurpose, _ state: ConsentState) throws {
        try core.trySetConsent(purpose: purpose, state: state)
    }

    /// The consent state of `purpose` now; `nil` before the SDK opened.
    public func consent(_ purpose: ConsentPurpose) -> ConsentState? { core.consent(purpose: purpose) }

    /// The person asks for their data to be deleted: a deletion request naming this
    /// device, the user and the anonymous id is sent upstream (first, whatever the consent
    /// and the opt-out, across restarts), then the local data is deleted (new device id).
    public func requestDeletion() { core.requestDeletion() }

    /// `requestDeletion`, throwing a refusal.
    public func tryRequestDeletion() throws { try core.tryRequestDeletion() }
    /// Hands over this device's push token: an APNs device token, hex-encoded, with its
    /// environment (the default provider), or an FCM registration token (`environment`
    /// `nil`). Call it whenever the platform gives one; a `push_token` event is recorded
    /// only when it changed, and again when the user changes and periodically. Not kept
    /// while opted out. `TernPush.didRegister(_:deviceToken:environment:)` does this from
    /// `application(_:didRegisterForRemoteNotificationsWithDeviceToken:)`.
    public func setPushToken(_ token: String, provider: PushProvider = .apns, environment: PushEnvironment?) {
        core.setPushToken(provider: provider, environment: environment, token: token)
    }

    /// `setPushToken`, throwing a refusal.
    public func trySetPushToken(_ token: String, provider: PushProvider = .apns, environment: PushEnvironment?) throws {
        try core.trySetPushToken(provider: provider, environment: environment, token: token)
    }

    /// Records that a push of campaign `campaignId` reached the device.
    public func pushReceived(_ campaignId: String) { core.pushReceived(campaignId: campaignId) }

    /// `pushReceived`, throwing a refusal.
    public func tryPushReceived(_ campaignId: String) throws { try core.tryPushReceived(campaignId: campaignId) }

    /// Records that the user opened a push of campaign `campaignId`, with the action chosen
    /// (`nil`: the default tap).
    public func pushOpened(_ campaignId: String, action: String? = nil) {
        core.pushOpened(campaignId: campaignId, action: action)
    }

    /// `pushOpened`, throwing a refusal.
    public func tryPushOpened(_ campaignId: String, action: String? = nil) throws {
        try core.tryPushOpened(campaignId: campaignId, action: action)
    }

    /// Sets `set` and removes `unset` user properties.
    public func setUserProperties(_ set: [String: TernPropertyValue], unset: [String] = []) {
        core.setUserProperties(set: Tern.ffi(set), unset: unset)
    }

    /// `setUserProperties`, throwing a refusal.
    public func trySetUserProperties(_ set: [String: TernPropertyValue], unset: [String] = []) throws {
        try core.trySetUserProperties(set: Tern.ffi(set), unset: unset)
    }

    /// Switches recording off (`true`) or back on; persisted across restarts.
    public func optOut(_ optedOut: Bool) { core.optOut(optedOut: optedOut) }

    /// `optOut`, throwing a refusal.
    public func tryOptOut(_ optedOut: Bool) throws { try core.tryOptOut(optedOut: optedOut) }

    /// True while opted out (`false` before the instance is open).
    public var isOptedOut: Bool { core.isOptedOut() }

    /// Deletes every event recorded before this call, the user id and the device id.
    public func deleteLocalData() { core.deleteLocalData() }

    /// `deleteLocalData`, throwing a refusal.
    public func tryDeleteLocalData() throws { try core.tryDeleteLocalData() }

    /// Starts a new session (ending the open one).
    public func startSession() { core.startSession() }

    /// `startSession`, throwing a refusal.
    public func tryStartSession() throws { try core.tryStartSession() }

    /// Ends the open session.
    public func endSession() { core.endSession() }

    /// `endSession`, throwing a refusal.
    public func tryEndSession() throws { try core.tryEndSession() }

    /// The open session's id.
    public var currentSession: String? { core.currentSession() }

    /// The app came to the foreground: starts a session if none is open, fetches the
    /// config when it is old (the lifecycle glue calls this).
    public func didEnterForeground() { core.onForeground() }

    /// `didEnterForeground`, throwing a refusal.
    public func tryDidEnterForeground() throws { try core.tryOnForeground() }

    /// The app went to the background: a flush is requested.
    public func didEnterBackground() { core.onBackground() }

    /// `didEnterBackground`, throwing a refusal.
    public func tryDidEnterBackground() throws { try core.tryOnBackground() }

    /// Records that the user acted on a message (`action` = the button id).
    public func messageImpression(messageId: String, action: String) {
        core.messageImpression(messageId: messageId, action: action)
    }

    /// `messageImpression`, throwing a refusal.
    public func tryMessageImpression(messageId: String, action: String) throws {
        try core.tryMessageImpression(messageId: messageId, action: action)
    }

    /// Network reachability changed (`NWPathMonitor` glue).
    public func setNetworkAvailable(_ available: Bool) { core.setNetworkAvailable(available: available) }

    /// Asks for everything recorded to be sent soon. Returns at once.
    public func flush() { core.flush() }

    // MARK: Waiting

    /// Requests a flush and waits until the device store is empty (everything recorded
    /// was uploaded) or `timeout` seconds pass; returns whether it emptied. `timeout`
    /// is clamped (negative: 0; `.infinity`, NaN or huge: no deadline). Before `open` it
    /// waits for the open first; when the instance is unavailable or stopped it returns
    /// `false` at once.
    ///
    /// The wait runs on a helper thread of the core, not on the caller's thread nor on
    /// the cooperative pool. Cancelling the calling task ends it promptly with `false`.
    /// (The core can only end every wait of an instance at once; a wait ended that way
    /// by another task's cancellation starts again for its remaining time.)
    public func flushAndWait(timeout: TimeInterval = 30) async -> Bool {
        let core = self.core
        let deadline = TernDeadline(after: timeout)
        while true {
            if Task.isCancelled { return false }
            let ended = TernFlag()
            let emptied = await withTaskCancellationHandler {
                await core.flushAndWait(timeoutMs: deadline.remainingMilliseconds)
            } onCancel: {
                Tern.cancelWaits(core, until: ended)
            }
            ended.set()
            if emptied { return true }
            if Task.isCancelled || deadline.passed { return false }
            switch core.state() {
            case .running, .notStarted: break
            case .unavailable, .stopped: return false
            }
            // Ended early without this task being cancelled: by another task's
            // cancellation, or because too many waits were in progress. Wait again.
            try? await Task.sleep(nanoseconds: 20_000_000)
        }
    }

    /// Ends the core's flush waits until `ended` is set: the cancellation can run just
    /// before the cancelled task's wait is registered in the core, so it is repeated
    /// (every 20 ms, for 5 s at most) on the blocking queue until that wait has ended.
    private static func cancelWaits(_ core: TernFFI.TernCore, until ended: TernFlag) {
        core.cancelFlushWaits()
        TernBlocking.queue.async {
            var attempts = 0
            while !ended.isSet && attempts < 250 {
                usleep(20_000)
                core.cancelFlushWaits()
                attempts += 1
            }
        }
    }

    /// Waits until everything recorded so far is in the device store, at most `timeout`
    /// seconds (clamped like `flushAndWait`). `false` when not running or when the
    /// calling task is cancelled (the blocked queue thread then finishes by itself).
    public func awaitApplied(timeout: TimeInterval = 5) async -> Bool {
        let core = self.core
        let ms = TernTime.milliseconds(timeout)
        return await TernBlocking.run(cancelled: false) { core.waitApplied(timeoutMs: ms) }
    }

    /// Stops recording and closes the store, waiting at most `timeout` seconds (clamped
    /// like `flushAndWait`). Afterwards every call is a counted no-op (`ShutDown`),
    /// getters return defaults, listeners are removed and waits end; references stay
    /// safe to use. Idempotent; not cancellable (it ends within its timeout).
    @discardableResult
    public func shutdown(timeout: TimeInterval = 5) async -> ShutdownReport {
        let core = self.core
        let ms = TernTime.milliseconds(timeout)
        return await TernBlocking.run { core.shutdown(timeoutMs: ms) }
    }

    /// State and counters. No I/O; never fails.
    public func stats() -> TernStats { core.stats() }

    // MARK: Config, flags, messages (from memory; defaults before open)

    /// The config value of `key` as String, Int64, Double or Bool.
    public func configValue(_ key: String) -> Any? { core.configValue(key: key).flatMap { $0.anyValue } }

    /// The text value of `key`, or `default`.
    public func string(_ key: String, default value: String) -> String { core.configString(key: key, default: value) }

    /// The integer value of `key`, or `default`.
    public func int(_ key: String, default value: Int64) -> Int64 { core.configLong(key: key, default: value) }

    /// The number value of `key`, or `default`.
    public func double(_ key: String, default value: Double) -> Double { core.configDouble(key: key, default: value) }

    /// The boolean value of `key`, or `default`.
    public func bool(_ key: String, default value: Bool) -> Bool { core.configBool(key: key, default: value) }

    /// The decision of flag `key`. Records its exposure (once per flag, variant, user and
    /// config version) unless `autoExposures(false)` turned that off.
    public func flag(_ key: String) -> FlagDecision { core.flag(key: key) }

    /// True when flag `key` is not `.off` (records the exposure as `flag` does).
    public func isEnabled(_ key: String) -> Bool { core.flagEnabled(key: key) }

    /// Records the exposure of flag `key` as it evaluates now: for flags read early
    /// (automatic exposures off) and shown later, call it when the user sees the result.
    /// Once per flag, variant, user and config version, also across restarts. Never throws.
    public func recordExposure(_ key: String) { core.recordExposure(key: key) }

    /// `recordExposure`, returning what it did and throwing a refusal.
    @discardableResult
    public func tryRecordExposure(_ key: String) throws -> ExposureOutcome {
        try core.tryRecordExposure(key: key)
    }

    /// Version, ETag and freshness of the config in use.
    public var configInfo: ConfigInfo { core.configInfo() }

    /// Asks for the config to be fetched now. Returns at once.
    public func refreshConfig() { core.refreshConfig() }

    /// Calls `body` on the SDK's `tern-live` thread (never the main thread) for every
    /// config change, until the subscription's `cancel()` or `shutdown`. Registered
    /// before `open`, it is attached when the instance opens. A panic-free Swift closure
    /// cannot throw; one that traps still crashes the app — keep it simple.
    @discardableResult
    public func onConfigChange(_ body: @escaping @Sendable (ConfigChange) -> Void) -> TernSubscription {
        TernSubscription(core.addConfigListener(listener: ConfigBridge(body)))
    }

    /// Calls `body` with each in-app message to show (the impression `shown` is already
    /// recorded; report taps with `messageImpression`), like `onConfigChange`.
    @discardableResult
    public func onMessage(_ body: @escaping @Sendable (InAppMessage) -> Void) -> TernSubscription {
        TernSubscription(core.addMessageListener(listener: MessageBridge(body)))
    }

    /// Config changes from now on (not replayed: read the current state with the
    /// getters); the listener is removed when iteration ends. Keeps the newest 64 when
    /// the consumer falls behind.
    public var configChanges: AsyncStream<ConfigChange> {
        AsyncStream(bufferingPolicy: .bufferingNewest(64)) { continuation in
            let sub = self.onConfigChange { continuation.yield($0) }
            continuation.onTermination = { _ in sub.cancel() }
        }
    }

    /// In-app messages to show, from now on; like `configChanges`.
    public var messages: AsyncStream<InAppMessage> {
        AsyncStream(bufferingPolicy: .bufferingNewest(64)) { continuation in
            let sub = self.onMessage { continuation.yield($0) }
            continuation.onTermination = { _ in sub.cancel() }
        }
    }

    /// The generated properties of `properties`; a value of another type is passed on as
    /// `.unsupported`, so the core refuses and counts the event.
    static func ffi(_ properties: [String: TernPropertyValue]) -> [String: TernFFI.PropertyValue] {
        properties.mapValues { value -> TernFFI.PropertyValue in
            switch value {
            case let v as String: return .text(value: v)
            case let v as Bool: return .bool(value: v)
            case let v as Int: return .integer(value: Int64(v))
            case let v as Int8: return .integer(value: Int64(v))
            case let v as Int16: return .integer(value: Int64(v))
            case let v as Int32: return .integer(value: Int64(v))
            case let v as Int64: return .integer(value: v)
            case let v as UInt8: return .integer(value: Int64(v))
            case let v as UInt16: return .integer(value: Int64(v))
            case let v as UInt32: return .integer(value: Int64(v))
            case let v as Double: return .real(value: v)
            case let v as Float: return .real(value: Double(v))
            default: return .unsupported(typeName: String(describing: type(of: value)))
            }
        }
    }
}

extension TernFFI.PropertyValue {
    /// The value as String, Int64, Double or Bool (`nil` for `.unsupported`, which the
    /// SDK never returns).
    var anyValue: Any? {
        switch self {
        case .text(let v): return v
        case .integer(let v): return v
        case .real(let v): return v
        case .bool(let v): return v
        case .unsupported: return nil
        }
    }
}
