// The Android push glue's logic (logic/TernPushLogic.kt) on the host JVM: against a
// recording fake, and through the real native library.
package dev.tern.android

import dev.tern.Tern
import dev.tern.TernConfig
import java.io.File
import java.nio.file.Files
import kotlin.time.Duration.Companion.seconds
import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test

class TernPushTest {
    private class Recorder : PushTarget {
        val calls = mutableListOf<String>()
        override fun setPushToken(token: String) { calls += "token $token" }
        override fun pushReceived(campaignId: String) { calls += "received $campaignId" }
        override fun pushOpened(campaignId: String, action: String?) { calls += "opened $campaignId ${action ?: "tap"}" }
    }

    @Test
    fun `only pushes with a campaign id are recorded, with the action chosen`() {
        val r = Recorder()
        TernPushLogic.onNewToken(r, "fcm:token-1")
        val ours = mapOf("tern_campaign_id" to "spring", "title" to "Sale")
        assertTrue(TernPushLogic.onMessageReceived(r, ours))
        assertFalse(TernPushLogic.onMessageReceived(r, mapOf("title" to "not ours")))
        assertFalse(TernPushLogic.onMessageReceived(r, mapOf("tern_campaign_id" to "")))
        assertTrue(TernPushLogic.onNotificationOpened(r, ours))
        assertTrue(TernPushLogic.onNotificationOpened(r, ours + ("tern_action" to "buy")))
        assertTrue(TernPushLogic.onNotificationOpened(r, ours + ("tern_action" to "buy"), "reply"))
        assertFalse(TernPushLogic.onNotificationOpened(r, mapOf("tern_campaign_id" to null)))
        assertEquals(
            listOf(
                "token fcm:token-1", "received spring", "opened spring tap",
                "opened spring buy", "opened spring reply",
            ),
            r.calls,
        )
    }

    @Test
    fun `the glue records through the SDK and never throws`() {
        val dir: File = Files.createTempDirectory("tern-push").toFile().also(File::deleteOnExit)
        val tern = Tern.startBlocking(TernConfig.builder("demo", "demo-key", dir).build())
        try {
            assertTrue(runBlocking { tern.awaitApplied(10.seconds) })
            val queued = tern.stats.queuedEvents
            val target = TernPushTarget(tern)
            TernPushLogic.onNewToken(target, "fcm:token-1")
            TernPushLogic.onNewToken(target, "fcm:token-1")
            TernPushLogic.onMessageReceived(target, mapOf("tern_campaign_id" to "spring"))
            TernPushLogic.onNotificationOpened(target, mapOf("tern_campaign_id" to "spring"))
            // Refused (a space in the token): counted, not thrown.
            TernPushLogic.onNewToken(target, "bad token")
            assertTrue(runBlocking { tern.awaitApplied(10.seconds) })
            assertEquals(queued + 3u, tern.stats.queuedEvents)
            assertEquals(1uL, tern.stats.droppedInvalid)
        } finally {
            tern.shutdownBlocking(10.seconds)
            tern.close()
        }
    }
}
