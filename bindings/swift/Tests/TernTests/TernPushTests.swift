// The Apple push glue (Sources/Tern/TernPush.swift) against a fake target, and the layer's
// push calls against the real SDK.
import Foundation
import XCTest
@testable import Tern

final class FakePushTarget: TernPushTarget, @unchecked Sendable {
    private let lock = NSLock()
    private var calls: [String] = []

    func setPushToken(_ token: String, provider: PushProvider, environment: PushEnvironment?) {
        record("token \(token) \(provider) \(environment.map { "\($0)" } ?? "none")")
    }

    func pushReceived(_ campaignId: String) { record("received \(campaignId)") }

    func pushOpened(_ campaignId: String, action: String?) {
        record("opened \(campaignId) \(action ?? "tap")")
    }

    var recorded: [String] {
        lock.lock()
        defer { lock.unlock() }
        return calls
    }

    private func record(_ call: String) {
        lock.lock()
        calls.append(call)
        lock.unlock()
    }
}

final class TernPushTests: XCTestCase {
    func testTheDeviceTokenIsHandedOverHexEncodedWithItsEnvironment() {
        let fake = FakePushTarget()
        let token = Data([0x00, 0x0f, 0xa0, 0xff])
        XCTAssertEqual(TernPush.hex(token), "000fa0ff")
        TernPush.didRegister(target: fake, deviceToken: token, environment: .sandbox)
        XCTAssertEqual(fake.recorded, ["token 000fa0ff apns sandbox"])
    }

    func testOnlyTernPushesAreRecordedAndADismissalIsNotAnOpen() {
        let fake = FakePushTarget()
        let ours: [AnyHashable: Any] = ["aps": ["alert": "hi"], TernPush.campaignKey: "spring"]
        let other: [AnyHashable: Any] = ["aps": ["alert": "hi"]]
        XCTAssertTrue(TernPush.received(target: fake, userInfo: ours))
        XCTAssertFalse(TernPush.received(target: fake, userInfo: other))
        XCTAssertFalse(TernPush.received(target: fake, userInfo: [TernPush.campaignKey: ""]))
        XCTAssertTrue(TernPush.opened(target: fake, userInfo: ours, actionIdentifier: TernPush.defaultAction))
        XCTAssertTrue(TernPush.opened(target: fake, userInfo: ours, actionIdentifier: "buy"))
        XCTAssertFalse(TernPush.opened(target: fake, userInfo: ours, actionIdentifier: TernPush.dismissAction))
        XCTAssertFalse(TernPush.opened(target: fake, userInfo: other, actionIdentifier: "buy"))
        XCTAssertEqual(fake.recorded, ["received spring", "opened spring tap", "opened spring buy"])
    }
}
