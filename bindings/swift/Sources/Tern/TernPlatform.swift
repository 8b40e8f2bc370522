// The platform reported upstream (SdkInfo.platform) and matched by message targeting.
import Foundation

/// The platform this build runs on, as reported upstream and matched by in-app message
/// targeting (`targeting.platforms`).
public enum TernPlatform {
    /// `ios` (iPhone and iPad: iPadOS apps are iOS apps to targeting, so a message for
    /// `ios` reaches iPads too), `macos` (a native Mac app, a Mac Catalyst app, or an
    /// iPhone/iPad app running on an Apple silicon Mac), `tvos`, `watchos`, `visionos`
    /// (a native visionOS app; an iPad app running on Vision Pro reports `ios`).
    /// Decided at compile time, plus a runtime check for iOS apps on a Mac.
    public static var current: String {
        #if os(visionOS)
        return "visionos"
        #elseif targetEnvironment(macCatalyst)
        return "macos"
        #elseif os(iOS)
        return ProcessInfo.processInfo.isiOSAppOnMac ? "macos" : "ios"
        #elseif os(macOS)
        return "macos"
        #elseif os(tvOS)
        return "tvos"
        #elseif os(watchOS)
        return "watchos"
        #else
        return "unknown"
        #endif
    }
}
