// Logins and consent around each drive, played by Kotlin devices through the layer's
// own calls, as fleet/src/logins.rs and fleet/src/consent.rs play them on `tern-sdk`
// devices: same roles by fleet index, same counts, reported in the pod's status under
// the same names (`LoginCounts`, `ConsentCounts`). The parent compares them with the
// stub's views and fails the run on a mismatch.
package dev.tern.fleet

import dev.tern.ConsentPurpose
import dev.tern.ConsentState
import dev.tern.ffi.TernException
import kotlin.time.Duration.Companion.seconds
import kotlinx.coroutines.runBlocking

/** What the devices' logins did (`LoginCounts` in fleet/src/logins.rs). */
class Logins {
    var aliases = 0L
    var resets = 0L
    var failed = 0L

    /** Every device aliases `fleet-user-<index>` (`user_of`). */
    fun login(devices: List<Device>) {
        for (d in devices) {
            if (counted("alias") { d.tern.tryAlias("fleet-user-${d.index}") }) aliases++
        }
    }

    /** Every device logs out. */
    fun logout(devices: List<Device>) {
        for (d in devices) {
            if (counted("reset") { d.tern.tryReset() }) resets++
        }
    }

    private fun counted(what: String, call: () -> Unit): Boolean = try {
        call()
        true
    } catch (e: TernException) {
        if (failed++ < 5) System.err.println("$what failed: $e")
        false
    }

    fun toJson(): Map<String, Any?> = mapOf("aliases" to aliases, "resets" to resets, "failed" to failed)
}

/** Impressions a deny-role device records per drive (`IMPRESSIONS_PER_DRIVE`). */
private const val IMPRESSIONS_PER_DRIVE = 2

/**
 * What the devices' consent roles did (`ConsentCounts` in fleet/src/consent.rs). A
 * device's role is its fleet index % 3: 0 grant (analytics pending during the drive,
 * granted after), 1 deny (messaging denied, impressions recorded: none may be kept),
 * 2 delete (delivers what it recorded, then requests deletion).
 */
class Consent {
    var grants = 0L
    var impressionsDenied = 0L
    var impressionsRefused = 0L
    var deletions = 0L
    var undeliveredBeforeDeletion = 0L
    var failed = 0L

    fun beforeDrive(devices: List<Device>) {
        for (d in devices) {
            when (d.index % 3) {
                0 -> counted("pending") { d.tern.trySetConsent(ConsentPurpose.ANALYTICS, ConsentState.PENDING) }
                1 -> if (counted("deny") { d.tern.trySetConsent(ConsentPurpose.MESSAGING, ConsentState.DENIED) }) {
                    val before = d.tern.stats.refusedConsent.toLong()
                    for (k in 0 until IMPRESSIONS_PER_DRIVE) {
                        counted("impression") { d.tern.tryMessageImpression("fleet-message-$k", "shown") }
                        impressionsDenied++
                    }
                    impressionsRefused += d.tern.stats.refusedConsent.toLong() - before
                }
                else -> {}
            }
        }
    }

    fun afterDrive(devices: List<Device>) {
        for (d in devices) {
            when (d.index % 3) {
                0 -> if (counted("grant") { d.tern.trySetConsent(ConsentPurpose.ANALYTICS, ConsentState.GRANTED) }) grants++
                1 -> {}
                else -> {
                    // What the device recorded is delivered first: a deletion request
                    // deletes what is still on the device.
                    if (!runBlocking { d.tern.flushAndWait(30.seconds) }) undeliveredBeforeDeletion++
                    if (counted("request_deletion") { d.tern.tryRequestDeletion() }) deletions++
                }
            }
        }
    }

    private fun counted(what: String, call: () -> Unit): Boolean = try {
        call()
        true
    } catch (e: TernException) {
        if (failed++ < 5) System.err.println("consent call $what failed: $e")
        false
    }

    /** The counts with the devices' own counters now. */
    fun toJson(devices: List<Device>): Map<String, Any?> {
        var released = 0L
        var pendingNow = 0L
        var sent = 0L
        for (d in devices) {
            val s = d.tern.stats
            released += s.consentPendingReleased.toLong()
            pendingNow += s.consentPending.toLong()
            sent += s.deletionRequestsSent.toLong()
        }
        return mapOf(
            "grants" to grants,
            "impressions_denied" to impressionsDenied,
            "impressions_refused" to impressionsRefused,
            "deletions" to deletions,
            "undelivered_before_deletion" to undeliveredBeforeDeletion,
            "failed" to failed,
            "released" to released,
            "pending_now" to pendingNow,
            "deletion_requests_sent" to sent,
        )
    }
}
