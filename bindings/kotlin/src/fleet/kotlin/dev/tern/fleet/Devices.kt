// Simulated devices that are what an Android app links: each one a `dev.tern.Tern` (the
// public Kotlin layer, over the generated bindings and the native library through JNA),
// with its own data directory, set up from the pod spec the fleet writes
// (`PodSpec` in fleet/src/pods.rs) through the layer's `TernConfig.Builder`.
package dev.tern.fleet

import dev.tern.Tern
import dev.tern.TernConfig
import java.io.File
import dev.tern.ffi.DeviceContext
import dev.tern.ffi.TernNetworkType
import java.util.concurrent.atomic.AtomicLong
import kotlin.time.Duration.Companion.seconds
import kotlin.time.Duration.Companion.milliseconds

/**
 * The part of the fleet's pod spec a Kotlin device uses: what `start_device`
 * (fleet/src/devices.rs) sets on a Rust device. `runtime_threads` is the rest: each
 * Kotlin device runs its uploader on its own thread, as in an app.
 */
class PodSpec(
    val appId: String,
    val appKey: String,
    /** The shard map as the JSON document relays serve. */
    val shardMapJson: String,
    val caPem: String,
    val maxBatchEvents: Int,
    val maxBatchAgeMs: Long,
    val connectTimeoutMs: Long,
    val requestTimeoutMs: Long,
    /** First retry backoff. */
    val retryBaseMs: Long,
    /** QUIC re-probe interval on the HTTPS fallback. */
    val quicReprobeMs: Long,
    /** Group apply delay. */
    val applyDelayMs: Long,
    /** Device `i` sends from [deviceAddress] `(i)`, not the host's default source address. */
    val ownAddress: Boolean,
    /** Every other device (odd index) is identified as `user-<index>`. */
    val identify: Boolean,
    /** Device `i` keeps its data in `root/device-<i>`. */
    val root: File,
    /** Devices alias a user before each drive and reset after it ([Logins]). */
    val logins: Boolean = false,
    /** Devices play a consent role around each drive ([Consent]). */
    val consent: Boolean = false,
    /** Devices set push tokens and report pushes around each drive ([Push]). */
    val push: Boolean = false,
    /** Flags every device reads before and after each drive ([Exposures]); empty: none. */
    val exposureFlags: List<String> = emptyList(),
    /** Devices start as app 1.0 with lifecycle events, change networks, and half are updated to 2.0 ([AppUpdates]). */
    val appUpdates: Boolean = false,
) {
    companion object {
        /** Reads the spec file the parent wrote. */
        fun read(file: File): PodSpec {
            @Suppress("UNCHECKED_CAST")
            val o = parseJson(file.readText()) as? Map<String, Any?>
                ?: throw JsonException("${file.path}: not a JSON object")
            return PodSpec(
                appId = o.req("app_id"),
                appKey = o.req("app_key"),
                shardMapJson = toJson(o.req<Map<String, Any?>>("shard_map")),
                caPem = o.req("ca_pem"),
                maxBatchEvents = o.long("max_batch_events").toInt(),
                maxBatchAgeMs = o.long("max_batch_age_ms"),
                connectTimeoutMs = o.long("connect_timeout_ms"),
                requestTimeoutMs = o.long("request_timeout_ms"),
                retryBaseMs = o.long("retry_base_ms"),
                quicReprobeMs = o.long("quic_reprobe_ms"),
                applyDelayMs = o.long("apply_delay_ms"),
                ownAddress = o.req("own_address"),
                identify = o.req("identify"),
                root = File(o.req<String>("root")),
                logins = o["logins"] as? Boolean ?: false,
                consent = o["consent"] as? Boolean ?: false,
                push = o["push"] as? Boolean ?: false,
                exposureFlags = (o["exposure_flags"] as? List<*>)?.map { it as String } ?: emptyList(),
                appUpdates = o["app_updates"] as? Boolean ?: false,
            )
        }
    }

    /**
     * The layer's config of device [index], as app [version] (with `--app-updates`: its
     * context as `device_context` of fleet/src/devices.rs gives it).
     */
    fun config(index: Int, version: String = FIRST_VERSION): TernConfig = TernConfig.builder(appId, appKey, File(root, "device-$index"))
        // The pods count what their devices record: no events the SDK adds by itself,
        // but for the lifecycle events `--app-updates` checks.
        .autoLifecycle(appUpdates)
        .apply {
            if (appUpdates) {
                appVersion(version)
                context(
                    DeviceContext(
                        appBuild = "build-$version",
                        osName = "linux",
                        deviceModel = "tern-fleet",
                        networkType = TernNetworkType.WIFI,
                    ),
                )
            }
        }
        .shardMapJson(shardMapJson)
        .trustCertificate(caPem, only = true)
        .maxBatchEvents(maxBatchEvents)
        .maxBatchAge(maxBatchAgeMs.milliseconds)
        .connectTimeout(connectTimeoutMs.milliseconds)
        .requestTimeout(requestTimeoutMs.milliseconds)
        .retryBackoff(retryBaseMs.milliseconds)
        .quicReprobe(quicReprobeMs.milliseconds)
        .applyDelay(applyDelayMs.milliseconds)
        .apply { if (ownAddress) localAddress(deviceAddress(index)) }
        .build()
}

/**
 * The loopback address device [index] sends from: `device_address` of
 * fleet/src/devices.rs (`127.1.0.0` onwards, one per device), which
 * bindings/scripts/test-fleet-kotlin.sh checks the pods' sockets against.
 */
fun deviceAddress(index: Int): String =
    "127.${1 + ((index ushr 16) and 0x7f)}.${(index ushr 8) and 0xff}.${index and 0xff}"

/** One simulated device; [user] is the user it was identified as, if any. */
class Device(val index: Int, tern: Tern, val user: String?) {
    /** The running instance (a new one after [relaunch]). */
    var tern: Tern = tern
        private set

    /** `track` calls the layer refused (counted by its error listener, on the calling thread). */
    val refused = AtomicLong()

    /** Refusals of other calls (identify, sessions), logged to stderr. */
    val otherRefusals = AtomicLong()

    /** `track` calls the layer accepted. */
    var tracked = 0L

    /** This-process counters ([processCounters]) of the instances [relaunch] replaced. */
    private var retired = LongArray(COUNTERS)

    /**
     * The layer's this-process counters over every instance of this device: events
     * recorded and acknowledged; exposures recorded, already recorded, over the cap and
     * failed (indexed by [EVENTS_RECORDED] and the others).
     */
    fun processCounters(): LongArray {
        val s = tern.stats
        val now = longArrayOf(
            s.eventsRecorded.toLong(), s.eventsAcked.toLong(), s.exposuresRecorded.toLong(),
            s.exposuresAlreadyRecorded.toLong(), s.exposuresOverCap.toLong(), s.exposuresFailed.toLong(),
        )
        return LongArray(COUNTERS) { now[it] + retired[it] }
    }

    init {
        listen()
    }

    private fun listen() {
        tern.setErrorListener { call, error ->
            if (call == "track") {
                refused.incrementAndGet()
            } else if (otherRefusals.getAndIncrement() < 5) {
                System.err.println("device $index: $call refused: $error")
            }
        }
    }

    /**
     * The app is updated: the instance is shut down and a new one started with [config]
     * on the same data directory, then brought to the foreground (`relaunch_with` in
     * fleet/src/devices.rs). Throws what `Tern.startBlocking` throws.
     */
    fun relaunch(config: TernConfig) {
        tern.shutdownBlocking(10.seconds)
        retired = processCounters()
        tern = Tern.startBlocking(config)
        listen()
        tern.onForeground()
    }

    /** Its store is open and has applied the `identify`: its routing key is known. */
    val ready: Boolean get() = tern.stats.let { it.deviceId != null && it.userId == user }

    /** Records [name] with [properties] and counts whether the layer took it. */
    fun track(name: String, properties: Map<String, Any>) {
        val before = refused.get()
        tern.track(name, properties)
        if (refused.get() == before) tracked++
    }

    companion object {
        /** Indices of [processCounters]. */
        const val EVENTS_RECORDED = 0
        const val EVENTS_ACKED = 1
        const val EXPOSURES_RECORDED = 2
        const val EXPOSURES_ALREADY = 3
        const val EXPOSURES_OVER_CAP = 4
        const val EXPOSURES_FAILED = 5
        const val COUNTERS = 6

        /** Opens device [index] of [spec] (throws what `Tern.startBlocking` throws). */
        fun start(spec: PodSpec, index: Int): Device {
            val user = if (spec.identify && index % 2 == 1) "user-$index" else null
            val d = Device(index, Tern.startBlocking(spec.config(index)), user)
            if (user != null) d.tern.identify(user)
            return d
        }
    }
}

/** What the profile played out (`BehaviourCounts` in fleet/src/devices.rs). */
class Behaviour {
    var backgrounded = 0L
    var foregrounded = 0L
    var networkLost = 0L

    fun toJson(): Map<String, Any?> = mapOf(
        "backgrounded" to backgrounded,
        "foregrounded" to foregrounded,
        "network_lost" to networkLost,
    )
}

/**
 * The pod's `PodStatus` (fleet/src/pods.rs) from the layer's own counters: `tracked`
 * and `refused` from the calls and the error listener, `events_recorded`,
 * `events_acked` and `queued_events` from `Tern.stats`. The layer's `TernStats` has no
 * per-request upload counters (QUIC/HTTPS successes, transport failures, failovers,
 * `Retry` replies, busy push-backs, rejected batches): those totals are 0 here, and
 * the report says so for a Kotlin fleet.
 */
fun status(
    devices: List<Device>,
    behaviour: Behaviour,
    logins: Logins? = null,
    consent: Consent? = null,
    push: Push? = null,
    exposures: Exposures? = null,
    updates: AppUpdates? = null,
): Map<String, Any?> {
    var recorded = 0L
    var acked = 0L
    var queued = 0L
    for (d in devices) {
        val c = d.processCounters()
        recorded += c[Device.EVENTS_RECORDED]
        acked += c[Device.EVENTS_ACKED]
        queued += d.tern.stats.queuedEvents.toLong()
    }
    return mapOf(
        "devices" to devices.size,
        "tracked" to devices.sumOf { it.tracked },
        "events_recorded" to recorded,
        "refused" to devices.sumOf { it.refused.get() },
        "totals" to mapOf(
            "quic_ok" to 0L,
            "https_ok" to 0L,
            "failures" to 0L,
            "failovers" to 0L,
            "retry_replies" to 0L,
            "busy" to 0L,
            "events_acked" to acked,
            "batches_rejected" to 0L,
            "queued_events" to queued,
        ),
        "behaviour" to behaviour.toJson(),
        "logins" to (logins ?: Logins()).toJson(),
        "consent" to (consent ?: Consent()).toJson(if (consent == null) emptyList() else devices),
        "push" to (push ?: Push(0)).toJson(if (push == null) emptyList() else devices),
        "exposures" to (exposures ?: Exposures(emptyList())).toJson(if (exposures == null) emptyList() else devices),
    ).let { if (updates == null) it else it + ("app_updates" to updates.toJson()) }
}
