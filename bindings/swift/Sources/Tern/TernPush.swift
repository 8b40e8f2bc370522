// The Apple push glue (protocol §8.3): the calls an app makes from
// `application(_:didRegisterForRemoteNotificationsWithDeviceToken:)` and its
// `UNUserNotificationCenterDelegate`. The logic works on plain values (token bytes, the
// notification's `userInfo`, the action identifier) against `TernPushTarget`, so XCTest
// drives it with a fake; the `UserNotifications` overloads only unpack the system types.
import Foundation
#if canImport(UserNotifications)
import UserNotifications
#endif

/// What the push glue calls: a `Tern`, or a fake in tests.
protocol TernPushTarget: AnyObject, Sendable {
    func setPushToken(_ token: String, provider: PushProvider, environment: PushEnvironment?)
    func pushReceived(_ campaignId: String)
    func pushOpened(_ campaignId: String, action: String?)
}

extension Tern: TernPushTarget {}

/// Push notifications for an app using Tern. The campaign of a push is read from its
/// payload under `TernPush.campaignKey` (`"tern_campaign_id"`, next to `aps`); a push
/// without one is not Tern's and is not recorded.
public enum TernPush {
    /// The payload key holding the campaign id.
    public static let campaignKey = "tern_campaign_id"

    /// The action identifier of a plain tap on the notification
    /// (`UNNotificationDefaultActionIdentifier`).
    static let defaultAction = "com.apple.UNNotificationDefaultActionIdentifier"
    /// The action identifier of a dismissal (`UNNotificationDismissActionIdentifier`): not
    /// an open.
    static let dismissAction = "com.apple.UNNotificationDismissActionIdentifier"

    /// The APNs device token as the SDK records it: lower-case hex.
    public static func hex(_ deviceToken: Data) -> String {
        deviceToken.map { String(format: "%02x", $0) }.joined()
    }

    /// From `application(_:didRegisterForRemoteNotificationsWithDeviceToken:)`: hands the
    /// token over, hex-encoded. `environment` is the app's `aps-environment` entitlement
    /// (`.sandbox` for development builds, `.production` otherwise).
    public static func didRegister(_ tern: Tern, deviceToken: Data, environment: PushEnvironment) {
        didRegister(target: tern, deviceToken: deviceToken, environment: environment)
    }

    /// The campaign id of a notification's `userInfo`, if it is Tern's.
    public static func campaignId(_ userInfo: [AnyHashable: Any]) -> String? {
        guard let id = userInfo[campaignKey] as? String, !id.isEmpty else { return nil }
        return id
    }

    /// From `userNotificationCenter(_:willPresent:withCompletionHandler:)` (a push that
    /// arrived while the app is in the foreground), or wherever the app learns a push
    /// arrived: records `push_received` for Tern's pushes. Returns whether it was one.
    @discardableResult
    public static func received(_ tern: Tern, userInfo: [AnyHashable: Any]) -> Bool {
        received(target: tern, userInfo: userInfo)
    }

    /// From `userNotificationCenter(_:didReceive:withCompletionHandler:)`: records
    /// `push_opened` for Tern's pushes, with the action chosen (none for a plain tap; a
    /// dismissal is not an open). Returns whether it recorded one.
    @discardableResult
    public static func opened(_ tern: Tern, userInfo: [AnyHashable: Any], actionIdentifier: String) -> Bool {
        opened(target: tern, userInfo: userInfo, actionIdentifier: actionIdentifier)
    }


    static func didRegister(target: TernPushTarget, deviceToken: Data, environment: PushEnvironment) {
        target.setPushToken(hex(deviceToken), provider: .apns, environment: environment)
    }

    static func received(target: TernPushTarget, userInfo: [AnyHashable: Any]) -> Bool {
        guard let id = campaignId(userInfo) else { return false }
        target.pushReceived(id)
        return true
    }

    static func opened(target: TernPushTarget, userInfo: [AnyHashable: Any], actionIdentifier: String) -> Bool {
        guard let id = campaignId(userInfo), actionIdentifier != dismissAction else { return false }
        target.pushOpened(id, action: actionIdentifier == defaultAction ? nil : actionIdentifier)
        return true
    }
}

#if canImport(UserNotifications)
extension TernPush {
    /// `received(_:userInfo:)` for `userNotificationCenter(_:willPresent:withCompletionHandler:)`.
    @discardableResult
    public static func willPresent(_ tern: Tern, _ notification: UNNotification) -> Bool {
        received(tern, userInfo: notification.request.content.userInfo)
    }

    /// `opened(_:userInfo:actionIdentifier:)` for `userNotificationCenter(_:didReceive:withCompletionHandler:)`.
    @discardableResult
    public static func didReceive(_ tern: Tern, _ response: UNNotificationResponse) -> Bool {
        opened(tern, userInfo: response.notification.request.content.userInfo,
               actionIdentifier: response.actionIdentifier)
    }
}
#endif
