// The core's log output (Rust `tracing`) bridged to the unified logging system
// (os.Logger, subsystem "dev.tern"), with a level setting.
import Foundation
import os
@preconcurrency import TernFFI

/// How much the SDK logs: `.off` (the default), `.error`, `.warn`, `.info`, `.debug`,
/// `.trace`.
public typealias TernLogLevel = TernFFI.LogLevel

/// The SDK's log, process-wide. Off until `install` is called; then the core's log lines
/// go to `os.Logger` (subsystem `dev.tern`, category `sdk`) at the chosen level — see
/// them in Console.app or with `log stream --predicate 'subsystem == "dev.tern"'`.
///
/// Levels map to `OSLogType`: `.error` → `.error`, `.warn` → `.default`, `.info` →
/// `.info`, `.debug` and `.trace` → `.debug`. Lines name the Rust module they come from.
/// By default a line's text is logged as private (redacted unless a debugger is attached
/// or the device has a logging profile installed): it may hold the app's data — a user
/// id, a data-directory path. `publicMessages: true` logs it in the clear.
public enum TernLog {
    /// Sends the SDK's log to `os.Logger` at `level` (replacing an earlier install).
    /// Returns whether the SDK's lines reach it (`false` only when the Rust library was
    /// linked into a program that installed its own `tracing` subscriber). Cheap; call
    /// it at launch, before `TernApp.start`, to see the start itself.
    @discardableResult
    public static func install(level: TernLogLevel = .warn, publicMessages: Bool = false) -> Bool {
        TernFFI.installLogSink(sink: OSLogSink(publicMessages: publicMessages), level: level)
    }

    /// The current level (`.off` until `install`). Setting it applies at once;
    /// `.off` silences the SDK (a disabled log statement then costs one comparison).
    public static var level: TernLogLevel {
        get { TernFFI.logLevel() }
        set { TernFFI.setLogLevel(level: newValue) }
    }
}

/// `LogSink` → `os.Logger`. Called on whatever thread logged; never calls back into Tern.
final class OSLogSink: TernFFI.LogSink {
    private static let logger = Logger(subsystem: "dev.tern", category: "sdk")
    private let publicMessages: Bool

    init(publicMessages: Bool) { self.publicMessages = publicMessages }

    func log(level: TernLogLevel, target: String, message: String) {
        let type = OSLogSink.type(of: level)
        let logger = OSLogSink.logger
        // The privacy of an interpolation must be a literal: one call per choice.
        if publicMessages {
            logger.log(level: type, "\(target, privacy: .public): \(message, privacy: .public)")
        } else {
            logger.log(level: type, "\(target, privacy: .public): \(message, privacy: .private)")
        }
    }

    /// The unified-logging type of a Tern level.
    static func type(of level: TernLogLevel) -> OSLogType {
        switch level {
        case .error: return .error
        case .warn: return .default
        case .info: return .info
        case .debug, .trace, .off: return .debug
        }
    }
}
