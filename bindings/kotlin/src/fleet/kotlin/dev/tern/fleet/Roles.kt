// Logins and consent around each drive, played by Kotlin devices through the layer's
// own calls, as fleet/src/logins.rs and fleet/src/consent.rs play them on `tern-sdk`
// devices: same roles by fleet index, same counts, reported in the pod's status under
// the same names (`LoginCounts`, `ConsentCounts`). The parent compares them with the
// stub's views and fails the run on a mismatch.
package dev.tern.fleet

import dev.tern.ConsentPurpose
import dev.tern.ConsentState
import dev.tern.ffi.TernException
import dev.tern.ffi.TernNetworkType
import kotlin.time.Duration.Companion.seconds
import kotlinx.coroutines.runBlocking

/** Counts the calls of a role that threw (the layer's refusals), logging the first few. */
abstract class Tally(private val role: String) {
    var failed = 0L

    /** Runs [call]; whether it returned (a refusal counts in [failed]). */
    protected fun counted(what: String, call: () -> Unit): Boolean = try {
        call()
        true
    } catch (e: TernException) {
        if (failed++ < 5) System.err.println("$role call $what failed: $e")
        false
    }
}

/** What the devices' logins did (`LoginCounts` in fleet/src/logins.rs). */
class Logins : Tally("login") {
    var aliases = 0L
    var resets = 0L

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
class Consent : Tally("consent") {
    var grants = 0L
    var impressionsDenied = 0L
    var impressionsRefused = 0L
    var deletions = 0L
    var undeliveredBeforeDeletion = 0L

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

/** The campaign the fleet's pushes belong to (`CAMPAIGN` in fleet/src/push.rs). */
private const val CAMPAIGN = "fleet-campaign"

/** FNV-1a 64 of a token (`digest` in fleet/src/push.rs): the same in every pod. */
fun tokenDigest(token: String): ULong {
    var h = 0xcbf29ce484222325UL
    for (b in token.toByteArray(Charsets.UTF_8)) {
        h = (h xor (b.toUByte().toULong())) * 0x00000100000001b3UL
    }
    return h
}

/**
 * Push tokens and pushes around each drive (`PushPod` in fleet/src/push.rs): before it,
 * every device hands over its token; after it, every device reports the campaign's push
 * received, every other one opens it (half of those with an action), every third
 * identifies a new user (the token moves to it) and every odd one rotates its token.
 * The status carries a count and an order-independent digest of the devices' newest
 * tokens, which the parent compares with the stub's push view.
 */
class Push(count: Int) : Tally("push") {
    private val generation = IntArray(count)
    private val set = BooleanArray(count)
    private var drives = 0L
    var tokensSet = 0L
    var rotations = 0L
    var userChanges = 0L
    var received = 0L
    var opened = 0L

    private fun token(index: Int, generation: Int) = "fleet-$index:gen-$generation"

    fun beforeDrive(devices: List<Device>) {
        for ((i, d) in devices.withIndex()) {
            if (counted("set_push_token") { d.tern.trySetPushToken(token(d.index, generation[i])) }) {
                tokensSet++
                set[i] = true
            }
        }
    }

    fun afterDrive(devices: List<Device>) {
        drives++
        for ((i, d) in devices.withIndex()) {
            val index = d.index
            if (counted("push_received") { d.tern.tryPushReceived(CAMPAIGN) }) received++
            if (index % 2 == 0) {
                val action = if (index % 4 == 0) "open-offer" else null
                if (counted("push_opened") { d.tern.tryPushOpened(CAMPAIGN, action) }) opened++
            }
            if (index % 3 == 0) {
                if (counted("identify") { d.tern.tryIdentify("fleet-push-user-$index-$drives") }) userChanges++
            }
            if (index % 2 == 1) {
                val next = generation[i] + 1
                if (counted("set_push_token") { d.tern.trySetPushToken(token(index, next)) }) {
                    generation[i] = next
                    set[i] = true
                    rotations++
                    tokensSet++
                }
            }
        }
    }

    fun toJson(devices: List<Device>): Map<String, Any?> {
        var withToken = 0L
        var digest = 0UL
        for ((i, d) in devices.withIndex()) {
            if (set[i]) {
                withToken++
                digest += tokenDigest(token(d.index, generation[i]))
            }
        }
        return mapOf(
            "tokens_set" to tokensSet,
            "rotations" to rotations,
            "user_changes" to userChanges,
            "received" to received,
            "opened" to opened,
            "failed" to failed,
            "devices_with_token" to withToken,
            "token_digest" to digest,
        )
    }
}

/** Reads per flag and device each time the flags are read (`READS` in fleet/src/exposures.rs). */
private const val READS = 3

/**
 * Experiment exposures (`read_flags` in fleet/src/exposures.rs): before and after each
 * drive every device reads each of [flags] [READS] times through `Tern.flag`, once it
 * has a config bundle (waiting at most 30 s in all); the layer records an exposure once
 * per flag, variant, unit and config version, and the parent compares the devices'
 * exposure counters with what the stub stored.
 */
class Exposures(private val flags: List<String>) {
    var reads = 0L
    var withoutBundle = 0L

    fun readFlags(devices: List<Device>) {
        val deadline = System.nanoTime() + 30_000_000_000
        while (System.nanoTime() < deadline && devices.any { it.tern.configInfo.version == 0UL }) {
            Thread.sleep(20)
        }
        for (d in devices) {
            if (d.tern.configInfo.version == 0UL) {
                withoutBundle++
                continue
            }
            repeat(READS) {
                for (f in flags) {
                    d.tern.flag(f)
                    reads++
                }
            }
        }
    }

    /** The reads with the devices' exposure counters now (`ExposureCounts`). */
    fun toJson(devices: List<Device>): Map<String, Any?> {
        val sum = LongArray(Device.COUNTERS)
        for (d in devices) d.processCounters().forEachIndexed { k, v -> sum[k] += v }
        return mapOf(
            "reads" to reads,
            "recorded" to sum[Device.EXPOSURES_RECORDED],
            "already_recorded" to sum[Device.EXPOSURES_ALREADY],
            "over_cap" to sum[Device.EXPOSURES_OVER_CAP],
            "failed" to sum[Device.EXPOSURES_FAILED],
            "without_bundle" to withoutBundle,
        )
    }
}

/** The version devices are installed with (`FIRST_VERSION` in fleet/src/context.rs). */
const val FIRST_VERSION = "1.0"

/** The version updated devices run (`UPDATED_VERSION`). */
const val UPDATED_VERSION = "2.0"

/**
 * App updates (fleet/src/context.rs): devices start as app 1.0 with lifecycle events on
 * (so each records an install and an open); before the drive the devices of odd index
 * move to cellular; after it the devices of even index are updated to 2.0 (shut down
 * and started again on the same data directory) and every other device is back on
 * Wi-Fi; then every device's store has applied what it recorded, so the lifecycle
 * events the store records are in the pod's count.
 */
class AppUpdates(private val spec: PodSpec) : Tally("app update") {
    var devices = 0L
    var updated = 0L
    var networkChanges = 0L

    private fun network(d: Device, type: TernNetworkType) {
        if (counted("setNetworkType") { d.tern.trySetNetworkType(type) }) networkChanges++
    }

    fun beforeDrive(all: List<Device>) {
        devices = all.size.toLong()
        for (d in all) if (d.index % 2 == 1) network(d, TernNetworkType.CELLULAR)
    }

    fun afterDrive(all: List<Device>) {
        for (d in all) {
            if (d.index % 2 == 0) {
                try {
                    d.relaunch(spec.config(d.index, UPDATED_VERSION))
                    updated++
                } catch (e: Exception) {
                    if (failed++ < 5) System.err.println("device ${d.index}: updating failed: $e")
                }
            } else {
                network(d, TernNetworkType.WIFI)
            }
        }
        for (d in all) {
            if (!runBlocking { d.tern.awaitApplied(30.seconds) }) failed++
        }
    }

    fun toJson(): Map<String, Any?> = mapOf(
        "devices" to devices,
        "updated" to updated,
        "network_changes" to networkChanges,
        "failed" to failed,
    )
}
