// Push notifications for an Android app using Tern (protocol §8.3): the calls an app
// makes from its FirebaseMessagingService and from the activity a notification opens.
// The decisions are in logic/TernPushLogic.kt (run by the host-JVM tests); this file
// only unpacks the Android types.
package dev.tern.android

import android.content.Intent
import dev.tern.Tern

/**
 * Push notifications with Tern and Firebase Cloud Messaging:
 *
 * ```
 * class MyMessagingService : FirebaseMessagingService() {
 *     override fun onNewToken(token: String) = TernPush.onNewToken(TernAndroid.current, token)
 *     override fun onMessageReceived(message: RemoteMessage) {
 *         TernPush.onMessageReceived(TernAndroid.current, message.data)
 *     }
 * }
 * // In the activity the notification opens (onCreate / onNewIntent):
 * TernPush.onNotificationOpened(TernAndroid.current, intent)
 * ```
 *
 * Also hand over the current token at start (`FirebaseMessaging.getInstance().token`):
 * an unchanged token records nothing. A push is Tern's when its data holds the campaign
 * id under [CAMPAIGN_KEY] (`tern_campaign_id`); other pushes are not recorded. None of
 * these throws: refusals are counted and reported like every call.
 */
object TernPush {
    /** The data key of a push's campaign id. */
    const val CAMPAIGN_KEY = TernPushLogic.CAMPAIGN_KEY

    /** The intent extra under which a notification action passes its action id. */
    const val ACTION_KEY = TernPushLogic.ACTION_KEY

    /** From `FirebaseMessagingService.onNewToken`: hands the FCM token over. */
    @JvmStatic
    fun onNewToken(tern: Tern, token: String) = TernPushLogic.onNewToken(TernPushTarget(tern), token)

    /**
     * From `FirebaseMessagingService.onMessageReceived` with `message.data`: records
     * `push_received` for Tern's pushes. Returns whether it was one.
     */
    @JvmStatic
    fun onMessageReceived(tern: Tern, data: Map<String, String>): Boolean =
        TernPushLogic.onMessageReceived(TernPushTarget(tern), data)

    /**
     * From the activity a notification opened, with its intent (FCM puts the data payload
     * into the extras): records `push_opened` for Tern's pushes, with [action] or the
     * [ACTION_KEY] extra (none: the default tap). Returns whether it recorded one.
     */
    @JvmStatic
    @JvmOverloads
    fun onNotificationOpened(tern: Tern, intent: Intent?, action: String? = null): Boolean {
        val extras = intent ?: return false
        val data = mapOf(
            CAMPAIGN_KEY to extras.getStringExtra(CAMPAIGN_KEY),
            ACTION_KEY to extras.getStringExtra(ACTION_KEY),
        )
        return TernPushLogic.onNotificationOpened(TernPushTarget(tern), data, action)
    }
}
