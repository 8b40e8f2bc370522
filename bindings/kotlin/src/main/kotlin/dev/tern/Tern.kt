// The idiomatic Kotlin layer over the generated bindings (package dev.tern.ffi).
// Conversions and threading only: every decision is made by the Rust core.
package dev.tern

import dev.tern.ffi.ConfigChangeListener
import dev.tern.ffi.FlagDecision
import dev.tern.ffi.InAppMessageListener
import dev.tern.ffi.PropertyValue
import dev.tern.ffi.RelayEndpoint
import dev.tern.ffi.TernCore
import dev.tern.ffi.TernException
import dev.tern.ffi.TernOptions
import java.io.File
import kotlin.time.Duration
import kotlin.time.Duration.Companion.seconds
import kotlinx.coroutines.CoroutineDispatcher
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.channels.awaitClose
import kotlinx.coroutines.flow.Flow
import kotlinx.coroutines.flow.buffer
import kotlinx.coroutines.flow.callbackFlow
import kotlinx.coroutines.withContext

/** A change of remote config values or flag decisions. */
typealias ConfigChange = dev.tern.ffi.ConfigChange

/** An in-app message to show now. */
typealias InAppMessage = dev.tern.ffi.InAppMessage

/** A button of an in-app message. */
typealias MessageAction = dev.tern.ffi.MessageAction

/** Version, ETag and freshness of the config in use. */
typealias ConfigInfo = dev.tern.ffi.ConfigInfo

/** State and health counters. */
typealias TernStats = dev.tern.ffi.TernStats

/** What `shutdown` achieved. */
typealias ShutdownReport = dev.tern.ffi.ShutdownReport

/** Settings of [Tern.start]; build with [TernConfig.builder]. */
class TernConfig internal constructor(internal val options: TernOptions) {
    /** The app id. */
    val appId: String get() = options.appId

    /** The data directory. */
    val dataDir: File get() = File(options.dataDir)

    /** Builder of [TernConfig]; the core validates on [Tern.start] and names the field at fault. */
    class Builder internal constructor(appId: String, appKey: String, dataDir: File) {
        private var o = TernOptions(
            appId = appId, appKey = appKey, dataDir = dataDir.path,
            platform = "android", sdkName = "tern-kotlin",
        )
        private val relays = mutableListOf<RelayEndpoint>()

        /** Bootstrap shard map as the JSON document relays serve. */
        fun shardMapJson(json: String) = apply { o = o.copy(shardMapJson = json) }

        /** Adds a bootstrap relay (when no shard map JSON is given). */
        fun relay(id: String, quicAddr: String, httpsUrl: String) = apply {
            relays += RelayEndpoint(id, quicAddr, httpsUrl)
        }

        /** Trusts [pem] in addition to the built-in roots, or instead of them when [only]. */
        fun trustCertificate(pem: String, only: Boolean = false) = apply {
            o = o.copy(caPem = pem, trustOnlyCaPem = only)
        }

        /** Cuts a batch at this many events. */
        fun maxBatchEvents(events: Int) = apply { o = o.copy(maxBatchEvents = events.toUInt()) }

        /** Sends everything once the oldest unsent event is this old. */
        fun maxBatchAge(age: Duration) = apply { o = o.copy(maxBatchAgeMs = age.inWholeMilliseconds.toULong()) }

        /** Bound of the device store. */
        fun maxStoreBytes(bytes: Long) = apply { o = o.copy(maxStoreBytes = bytes.toULong()) }

        /** Session inactivity timeout. */
        fun sessionTimeout(timeout: Duration) = apply {
            o = o.copy(sessionTimeoutMs = timeout.inWholeMilliseconds.toULong())
        }

        /** Platform reported upstream and used by message targeting (default `android`). */
        fun platform(platform: String) = apply { o = o.copy(platform = platform) }

        /** The host app's version, reported upstream. */
        fun appVersion(version: String) = apply { o = o.copy(appVersion = version) }

        /** The config. */
        fun build(): TernConfig = TernConfig(o.copy(relays = relays.toList()))
    }

    companion object {
        /** Starts a builder for [appId] with its [appKey], storing data in [dataDir]. */
        @JvmStatic
        fun builder(appId: String, appKey: String, dataDir: File) = Builder(appId, appKey, dataDir)
    }
}

/** A registered listener; [cancel] (or [close]) removes it. */
class Subscription internal constructor(private val handle: dev.tern.ffi.ListenerHandle) : AutoCloseable {
    /** Removes the listener; no new call starts after this returns. Idempotent. */
    fun cancel() = handle.cancel()

    /** Whether it was cancelled. */
    val isCancelled: Boolean get() = handle.isCancelled()

    /** Cancels and frees the native handle. */
    override fun close() {
        handle.cancel()
        handle.close()
    }
}

/**
 * The Tern SDK. Thread-safe. Errors are the sealed [TernException] (`dev.tern.ffi`:
 * `InvalidConfig`, `InvalidEvent`, `OptedOut`, `ShutDown`, `DataDirInUse`,
 * `StoreUnavailable`, `Io`, `Internal`); flag decisions the sealed [FlagDecision].
 * Recording calls (`track`, `purchase`, ...) return once the
 * event is durable on the device and never touch the network; they throw a
 * [TernException] subclass when the event is refused. Reads of config and flags are from
 * memory. Blocking work ([start], [shutdown], [awaitApplied], [flushAndWait]) is `suspend` and runs on
 * [Dispatchers.IO].
 */
class Tern private constructor(private val core: TernCore) : AutoCloseable {
    companion object {
        /** Starts the SDK off the caller's thread. */
        suspend fun start(config: TernConfig, dispatcher: CoroutineDispatcher = Dispatchers.IO): Tern =
            withContext(dispatcher) { startBlocking(config) }

        /** Starts the SDK on this thread (creates threads and the data directory: not on the main thread). */
        @JvmStatic
        fun startBlocking(config: TernConfig): Tern = Tern(TernCore.start(config.options))

        /** The native library's version. */
        @JvmStatic
        val version: String get() = dev.tern.ffi.ternSdkVersion()
    }

    /** Records a custom event. Property values: String, Int, Long, Short, Byte, Float, Double, Boolean. */
    fun track(name: String, properties: Map<String, Any> = emptyMap()) =
        core.track(name, properties.toFfi())

    /** Records a purchase of [amountMicros] millionths of [currency] (ISO 4217). */
    fun purchase(
        productId: String,
        amountMicros: Long,
        currency: String,
        quantity: Int = 1,
        properties: Map<String, Any> = emptyMap(),
    ) {
        if (quantity < 0) throw TernException.InvalidEvent("purchase quantity", "quantity must not be negative")
        core.purchase(productId, amountMicros, currency, quantity.toUInt(), properties.toFfi())
    }

    /** Sets the user of events recorded from now on; `null` makes them anonymous. */
    fun identify(userId: String?) = core.identify(userId)

    /** Sets [set] and removes [unset] user properties. */
    fun setUserProperties(set: Map<String, Any>, unset: List<String> = emptyList()) =
        core.setUserProperties(set.toFfi(), unset)

    /** Switches recording off (`true`) or back on; persisted across restarts. */
    fun optOut(optedOut: Boolean) = core.optOut(optedOut)

    /** True while opted out. */
    val isOptedOut: Boolean get() = core.isOptedOut()

    /** Deletes every event recorded before this call, the user id and the device id. */
    fun deleteLocalData() = core.deleteLocalData()

    /** Starts a new session. */
    fun startSession() = core.startSession()

    /** Ends the open session. */
    fun endSession() = core.endSession()

    /** The open session's id, if any. */
    val currentSession: String? get() = core.currentSession()

    /** The app came to the foreground (the Android glue calls this). */
    fun onForeground() = core.onForeground()

    /** The app went to the background: a flush is requested. */
    fun onBackground() = core.onBackground()

    /** Network reachability changed (the Android glue calls this). */
    fun setNetworkAvailable(available: Boolean) = core.setNetworkAvailable(available)

    /** Asks for everything recorded to be sent soon. Returns at once. */
    fun flush() = core.flush()

    /**
     * Requests a flush and waits (on [Dispatchers.IO]) until the device store is empty —
     * everything recorded was uploaded — or [timeout] passes. Returns whether it emptied.
     * For background-flush jobs (the Android glue's WorkManager worker).
     */
    suspend fun flushAndWait(timeout: Duration = 30.seconds): Boolean =
        withContext(Dispatchers.IO) { core.flushAndWait(timeout.inWholeMilliseconds.toULong()) }

    /** State and counters. No I/O. */
    val stats: TernStats get() = core.stats()

    /** The config value of [key] as String, Long, Double or Boolean, or `null`. */
    fun configValue(key: String): Any? = core.configValue(key)?.toKotlin()

    /** Every config value. */
    val configValues: Map<String, Any> get() = core.configValues().mapValues { it.value.toKotlin() }

    /** The text value of [key], or [default]. */
    fun configString(key: String, default: String): String = core.configString(key, default)

    /** The integer value of [key], or [default]. */
    fun configLong(key: String, default: Long): Long = core.configLong(key, default)

    /** The number value of [key], or [default]. */
    fun configDouble(key: String, default: Double): Double = core.configDouble(key, default)

    /** The boolean value of [key], or [default]. */
    fun configBoolean(key: String, default: Boolean): Boolean = core.configBool(key, default)

    /** The decision of flag [key]. */
    fun flag(key: String): FlagDecision = core.flag(key)

    /** True when flag [key] is not `Off`. */
    fun isEnabled(key: String): Boolean = core.flagEnabled(key)

    /** Version, ETag and freshness of the config in use. */
    val configInfo: ConfigInfo get() = core.configInfo()

    /** Asks for the config to be fetched now. Returns at once. */
    fun refreshConfig() = core.refreshConfig()

    /** Calls [listener] on the SDK's `tern-live` thread for every config change. */
    fun addConfigListener(listener: (ConfigChange) -> Unit): Subscription =
        Subscription(core.addConfigListener(object : ConfigChangeListener {
            override fun onConfigChanged(change: ConfigChange) = listener(change)
        }))

    /** Calls [listener] on the SDK's `tern-live` thread with each in-app message to show. */
    fun addMessageListener(listener: (InAppMessage) -> Unit): Subscription =
        Subscription(core.addMessageListener(object : InAppMessageListener {
            override fun onMessage(message: InAppMessage) = listener(message)
        }))

    /** Config changes as a cold [Flow]; collecting registers a listener, cancelling removes it. */
    val configChanges: Flow<ConfigChange>
        get() = callbackFlow {
            val sub = addConfigListener { trySend(it) }
            awaitClose { sub.close() }
        }.buffer(64)

    /** In-app messages to show, as a cold [Flow]. */
    val messages: Flow<InAppMessage>
        get() = callbackFlow {
            val sub = addMessageListener { trySend(it) }
            awaitClose { sub.close() }
        }.buffer(64)

    /** Records that the user acted on a message ([action] = the button id). */
    fun messageImpression(messageId: String, action: String) = core.messageImpression(messageId, action)

    /** Waits until everything recorded is in the device store (tests, orderly exits). */
    suspend fun awaitApplied(timeout: Duration = 5.seconds): Boolean =
        withContext(Dispatchers.IO) { core.waitApplied(timeout.inWholeMilliseconds.toULong()) }

    /** Stops recording and closes the store, waiting at most [timeout]. Idempotent. */
    suspend fun shutdown(timeout: Duration = 5.seconds): ShutdownReport =
        withContext(Dispatchers.IO) { core.shutdown(timeout.inWholeMilliseconds.toULong()) }

    /** Shuts down (blocking, up to 5 s) and frees the native object. */
    override fun close() {
        try {
            core.shutdown(5_000u)
        } finally {
            core.close()
        }
    }
}

private fun Map<String, Any>.toFfi(): Map<String, PropertyValue> = mapValues { (key, v) ->
    when (v) {
        is String -> PropertyValue.Text(v)
        is Boolean -> PropertyValue.Bool(v)
        is Long -> PropertyValue.Integer(v)
        is Int -> PropertyValue.Integer(v.toLong())
        is Short -> PropertyValue.Integer(v.toLong())
        is Byte -> PropertyValue.Integer(v.toLong())
        is Double -> PropertyValue.Real(v)
        is Float -> PropertyValue.Real(v.toDouble())
        is PropertyValue -> v
        else -> throw TernException.InvalidEvent(
            "property \"$key\"",
            "unsupported type ${v::class.simpleName}: use String, Long, Int, Double, Float or Boolean",
        )
    }
}

private fun PropertyValue.toKotlin(): Any = when (this) {
    is PropertyValue.Text -> value
    is PropertyValue.Integer -> value
    is PropertyValue.Real -> value
    is PropertyValue.Bool -> value
}
