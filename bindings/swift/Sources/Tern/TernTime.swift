// Durations at the boundary: every `TimeInterval` the Swift layer hands to the core goes
// through `TernTime.milliseconds`, so no value the app passes can trap a conversion.
import Foundation

/// Conversions of durations to the core's unsigned milliseconds.
///
/// The core takes any `UInt64` number of milliseconds and reads `UInt64.max` as "no
/// deadline". A `TimeInterval` is clamped on the way in: negative values and `-0` become
/// 0; `.infinity`, NaN and anything of 2^64 ms or more become `maxMilliseconds`;
/// fractions of a millisecond round up (so a tiny positive timeout is not 0).
enum TernTime {
    /// The largest duration: `UInt64.max` ms, "no deadline" for the core's waits.
    static let maxMilliseconds = UInt64.max

    /// `seconds` as milliseconds, clamped (see the type's documentation). Never traps.
    static func milliseconds(_ seconds: TimeInterval) -> UInt64 {
        if seconds.isNaN { return maxMilliseconds }
        if seconds <= 0 { return 0 }
        let ms = (seconds * 1000).rounded(.up)
        // Double(UInt64.max) is exactly 2^64: anything below converts without trapping.
        if !ms.isFinite || ms >= Double(UInt64.max) { return maxMilliseconds }
        return UInt64(ms)
    }
}

/// A deadline on the monotonic clock (`DispatchTime`), or none.
struct TernDeadline: Sendable {
    /// Uptime in nanoseconds at which it passes; `nil` = no deadline.
    private let end: UInt64?

    /// `seconds` from now, clamped like `TernTime.milliseconds`.
    init(after seconds: TimeInterval) {
        let ms = TernTime.milliseconds(seconds)
        let (ns, overflow) = ms.multipliedReportingOverflow(by: 1_000_000)
        let (sum, overflow2) = DispatchTime.now().uptimeNanoseconds.addingReportingOverflow(ns)
        end = (ms == TernTime.maxMilliseconds || overflow || overflow2) ? nil : sum
    }

    /// Milliseconds left (rounded up), `TernTime.maxMilliseconds` without a deadline.
    var remainingMilliseconds: UInt64 {
        guard let end else { return TernTime.maxMilliseconds }
        let now = DispatchTime.now().uptimeNanoseconds
        guard end > now else { return 0 }
        return (end - now + 999_999) / 1_000_000
    }

    /// Seconds left (`.infinity` without a deadline).
    var remainingSeconds: TimeInterval {
        guard end != nil else { return .infinity }
        return TimeInterval(remainingMilliseconds) / 1000
    }

    /// Whether it has passed (never, without a deadline).
    var passed: Bool {
        guard let end else { return false }
        return DispatchTime.now().uptimeNanoseconds >= end
    }
}
