package dev.tern.android

import dev.tern.Tern

/** What the push glue calls: a [Tern], or a recording fake in the host tests. */
internal interface PushTarget {
    fun setPushToken(token: String)
    fun pushReceived(campaignId: String)
    fun pushOpened(campaignId: String, action: String?)
}

/** [PushTarget] over a [Tern]: the non-throwing calls (refusals are counted and reported). */
internal class TernPushTarget(private val tern: Tern) : PushTarget {
    override fun setPushToken(token: String) = tern.setPushToken(token)
    override fun pushReceived(campaignId: String) = tern.pushReceived(campaignId)
    override fun pushOpened(campaignId: String, action: String?) = tern.pushOpened(campaignId, action)
}

/**
 * The push glue's decisions, on plain values: the FCM token as given, the message's
 * data map, the opened notification's extras. A push is Tern's when its data holds a
 * non-empty campaign id under [TernPushLogic.CAMPAIGN_KEY]; others are not recorded.
 */
internal object TernPushLogic {
    /** The data key of a push's campaign id (set by the backend in the FCM data payload). */
    const val CAMPAIGN_KEY = "tern_campaign_id"

    /** The extra under which an app's notification action passes the action id, if any. */
    const val ACTION_KEY = "tern_action"

    fun campaignId(data: Map<String, String?>): String? = data[CAMPAIGN_KEY]?.takeIf { it.isNotEmpty() }

    fun onNewToken(target: PushTarget, token: String) = target.setPushToken(token)

    fun onMessageReceived(target: PushTarget, data: Map<String, String?>): Boolean {
        val id = campaignId(data) ?: return false
        target.pushReceived(id)
        return true
    }

    fun onNotificationOpened(target: PushTarget, extras: Map<String, String?>, action: String? = null): Boolean {
        val id = campaignId(extras) ?: return false
        target.pushOpened(id, action ?: extras[ACTION_KEY]?.takeIf { it.isNotEmpty() })
        return true
    }
}
