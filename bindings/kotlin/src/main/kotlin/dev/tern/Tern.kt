// The idiomatic Kotlin layer over the generated bindings (package dev.tern.ffi).
// Conversions and threading only: every decision — what is kept before start, what is
// refused and counted after stop, which errors are reported — is made by the Rust
// export (bindings/README.md, "API contract").
package dev.tern

import dev.tern.ffi.ConfigChangeListener
import dev.tern.ffi.DeviceContext
import dev.tern.ffi.ErrorListener
import dev.tern.ffi.ExposureOutcome
import dev.tern.ffi.FlagDecision
import dev.tern.ffi.InAppMessageListener
import dev.tern.ffi.LogSink
import dev.tern.ffi.PropertyValue
import dev.tern.ffi.RelayEndpoint
import dev.tern.ffi.TernCore
import dev.tern.ffi.TernException
import dev.tern.ffi.TernNetworkType
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

/** A purpose the person using the app consents to separately: `ANALYTICS`, `MESSAGING`. */
typealias ConsentPurpose = dev.tern.ffi.ConsentPurpose

/** The consent state of a purpose: `GRANTED`, `DENIED`, `PENDING`. */
typealias ConsentState = dev.tern.ffi.ConsentState

/** What `shutdown` achieved. */
typealias ShutdownReport = dev.tern.ffi.ShutdownReport

/** Where an instance is in its life cycle: `NOT_STARTED`, `RUNNING`, `UNAVAILABLE`, `STOPPED`. */
typealias TernState = dev.tern.ffi.TernState

/** How much the SDK logs: `OFF` (default), `ERROR`, `WARN`, `INFO`, `DEBUG`, `TRACE`. */
typealias LogLevel = dev.tern.ffi.LogLevel

/** Who delivers push notifications to the device: `FCM`, `APNS`. */
typealias PushProvider = dev.tern.ffi.PushProvider

/** The APNs environment of a device token: `SANDBOX`, `PRODUCTION`. */
typealias PushEnvironment = dev.tern.ffi.PushEnvironment

/** Receives every call the SDK refused; see [Tern.setErrorListener]. */
fun interface TernErrorListener {
    /** [call] (`track`, `identify`, ...) was refused with [error]. */
    fun onError(call: String, error: TernException)
}

/** Receives the SDK's log lines; see [Tern.installLogSink]. */
fun interface TernLogSink {
    /** One line: [target] is the SDK module, [message] the text and its `key=value` fields. */
    fun log(level: LogLevel, target: String, message: String)
}

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
            platform = "android", sdkName = "tern-kotlin", autoLifecycle = true,
        )
        private val relays = mutableListOf<RelayEndpoint>()

        /** Bootstrap shard map as the JSON document relays serve. */
        fun shardMapJson(json: String) = apply { o = o.copy(shardMapJson = json) }

        /** Adds a bootstrap relay (when no shard map JSON is given). */
        fun relay(id: String, quicAddr: String, httpsUrl: String) = apply {
            relays += RelayEndpoint(id, quicAddr, httpsUrl)
        }

        /** Trusts [pem] in addition to the built-in roots, or instead of them when [only]. */
        @JvmOverloads
        fun trustCertificate(pem: String, only: Boolean = false) = apply {
            o = o.copy(caPem = pem, trustOnlyCaPem = only)
        }

        /** Cuts a batch at this many events (at least 1). */
        fun maxBatchEvents(events: Int) = apply { o = o.copy(maxBatchEvents = events.coerceAtLeast(1).toUInt()) }

        /** Sends everything once the oldest unsent event is this old. */
        fun maxBatchAge(age: Duration) = apply { o = o.copy(maxBatchAgeMs = age.toFfiMillis()) }

        /** Bound of the device store (the core refuses less than 64 KiB). */
        fun maxStoreBytes(bytes: Long) = apply { o = o.copy(maxStoreBytes = bytes.coerceAtLeast(0).toULong()) }

        /** Session inactivity timeout. */
        fun sessionTimeout(timeout: Duration) = apply { o = o.copy(sessionTimeoutMs = timeout.toFfiMillis()) }

        /**
         * Whether reading a flag ([Tern.flag], [Tern.isEnabled]) records its exposure (default
         * on). Off: only [Tern.recordExposure] records exposures.
         */
        fun autoExposures(enabled: Boolean) = apply { o = o.copy(autoExposures = enabled) }

        /**
         * The app and device at start: build, OS, model, screen, and the first locale, time zone
         * and network (the Android glue fills it). Later changes: [Tern.setNetworkType],
         * [Tern.setLocale], [Tern.setTimeZone].
         */
        fun context(context: DeviceContext) = apply { o = o.copy(context = context) }

        /**
         * Whether the SDK records `app_installed`, `app_updated` (with the previous version) and
         * `app_opened` by itself (default on).
         */
        fun autoLifecycle(enabled: Boolean) = apply { o = o.copy(autoLifecycle = enabled) }

        /**
         * The consent state of every purpose until the app first sets it with
         * [Tern.setConsent] (default [ConsentState.GRANTED]); once set, the stored state wins.
         */
        fun defaultConsent(state: ConsentState) = apply { o = o.copy(defaultConsent = state) }

        /** Most events kept on the device while consent is pending (default 1000, oldest dropped). */
        fun maxPendingEvents(n: Long) = apply { o = o.copy(maxPendingEvents = n.coerceAtLeast(0).toULong()) }

        /** How old the last recorded push token may get before it is recorded again (default 7 days). */
        fun pushRefreshInterval(interval: Duration) = apply { o = o.copy(pushRefreshIntervalMs = interval.toFfiMillis()) }

        /** Platform reported upstream and used by message targeting (default `android`). */
        fun platform(platform: String) = apply { o = o.copy(platform = platform) }

        /** The host app's version, reported upstream. */
        fun appVersion(version: String) = apply { o = o.copy(appVersion = version) }

        /**
         * Longest QUIC handshake or HTTPS connect to a relay before the next try (default 3 s;
         * the core refuses 0 and more than 60 s).
         */
        fun connectTimeout(timeout: Duration) = apply { o = o.copy(connectTimeoutMs = timeout.toFfiMillis()) }

        /** Longest wait for a relay's reply (default 10 s; the core refuses 0 and more than 10 min). */
        fun requestTimeout(timeout: Duration) = apply { o = o.copy(requestTimeoutMs = timeout.toFfiMillis()) }

        /**
         * The longest first wait after a failed upload; each further failure doubles it, up to
         * 5 min (default 1 s; the core refuses 0 and more than 5 min).
         */
        fun retryBackoff(base: Duration) = apply { o = o.copy(retryBaseMs = base.toFfiMillis()) }

        /**
         * How long a relay that failed over QUIC is used over HTTPS before QUIC is tried again
         * (default 5 min; the core refuses 0 and more than 24 h).
         */
        fun quicReprobe(interval: Duration) = apply { o = o.copy(quicReprobeMs = interval.toFfiMillis()) }

        /**
         * Recorded events reach the device store at most this long after the first of them, in
         * one transaction (default 1 s; zero applies each at once; the core refuses more than 5 s).
         */
        fun applyDelay(delay: Duration) = apply { o = o.copy(applyDelayMs = delay.toFfiMillis()) }

        /**
         * The local IP address (`127.1.0.7`, `::1`) the SDK's QUIC and HTTPS sockets send from;
         * text that is not one is refused on [Tern.start] (`local_address`). For simulators and
         * tests that give each device its own source address: apps leave it unset.
         */
        fun localAddress(address: String) = apply { o = o.copy(localAddress = address) }

        /** The config. */
        fun build(): TernConfig = TernConfig(o.copy(relays = relays.toList()))
    }

    companion object {
        /** Starts a builder for [appId] with its [appKey], storing data in [dataDir]. */
        @JvmStatic
        fun builder(appId: String, appKey: String, dataDir: File) = Builder(appId, appKey, dataDir)
    }
}

/**
 * A registered listener. It stays registered until [cancel] (or [close]) or the
 * instance's shutdown — losing this object does not remove it.
 */
class Subscription internal constructor(private val handle: dev.tern.ffi.ListenerHandle) : AutoCloseable {
    /** Removes the listener; no new call starts after this returns. Idempotent. */
    fun cancel() = handle.cancel()

    /** Whether it was cancelled (or the instance stopped). */
    val isCancelled: Boolean get() = handle.isCancelled()

    /** Same as [cancel]. */
    override fun close() = cancel()
}

/**
 * The Tern SDK. Thread-safe.
 *
 * **Recording never throws.** `track`, `purchase`, `identify`, `setUserProperties`,
 * `optOut`, `deleteLocalData`, `startSession`, `endSession`, `onForeground`,
 * `onBackground`, `messageImpression` return normally in every state — before the
 * instance is open (calls are kept, bounded, and applied in order once it is), after
 * opt-out, after [shutdown], on invalid input, on I/O failure. A refused call is counted
 * in [stats], logged, and handed to the [setErrorListener] listener. The `try` forms
 * (`tryTrack`, ...) throw the refusal as a [TernException] subclass instead
 * (`InvalidEvent`, `OptedOut`, `ShutDown`, `DataDirInUse`, `NotStarted`, ...).
 *
 * Recording calls never touch the network; reads of config and flags are from memory.
 * Blocking work ([start], [open], [shutdown], [awaitApplied]) is `suspend` on
 * [Dispatchers.IO] (or has a `Blocking` form); [flushAndWait] waits on a native helper
 * thread and ends when its coroutine is cancelled.
 */
class Tern private constructor(private val core: TernCore) : AutoCloseable {
    /** This instance on the native fast `track` path (0: use the generated path). */
    private val fastId: Long = if (FastTrack.available) core.fastPathId().toLong() else 0L

    companion object {
        /**
         * An instance that is not started: it accepts every call at once and keeps
         * recording calls until [open]. No I/O: fine on the main thread.
         */
        @JvmStatic
        fun create(): Tern = Tern(TernCore())

        /** Creates and opens an instance off the caller's thread; throws what [open] throws. */
        @Throws(TernException::class)
        suspend fun start(config: TernConfig, dispatcher: CoroutineDispatcher = Dispatchers.IO): Tern =
            withContext(dispatcher) { startBlocking(config) }

        /** [start] on this thread (a few file system calls: not on the main thread). */
        @JvmStatic
        @Throws(TernException::class)
        fun startBlocking(config: TernConfig): Tern = create().also { it.openBlocking(config) }

        /** The native library's version. */
        @JvmStatic
        val version: String get() = dev.tern.ffi.ternSdkVersion()

        /**
         * Sends the SDK's log lines at [level] and above to [sink], for this process
         * (replacing an earlier sink). Returns whether the SDK's logs reach it.
         */
        @JvmStatic
        fun installLogSink(sink: TernLogSink, level: LogLevel): Boolean =
            dev.tern.ffi.installLogSink(object : LogSink {
                override fun log(level: LogLevel, target: String, message: String) = sink.log(level, target, message)
            }, level)

        /** Changes the log level (`OFF` silences the sink). */
        @JvmStatic
        fun setLogLevel(level: LogLevel) = dev.tern.ffi.setLogLevel(level)

        /** The current log level. */
        @JvmStatic
        val logLevel: LogLevel get() = dev.tern.ffi.logLevel()
    }

    /**
     * Starts the SDK (validates [config], takes its data directory, starts the native
     * threads) and applies the calls made so far. Throws `InvalidConfig` (naming the
     * field), `DataDirInUse` (another process holds the directory), `Io`; after a failure
     * the instance stays a counted no-op. Opening again returns the first outcome.
     */
    @Throws(TernException::class)
    suspend fun open(config: TernConfig, dispatcher: CoroutineDispatcher = Dispatchers.IO) =
        withContext(dispatcher) { openBlocking(config) }

    /** [open] on this thread (a few file system calls: not on the main thread). */
    @Throws(TernException::class)
    fun openBlocking(config: TernConfig) = core.open(config.options)

    /** Where the instance is in its life cycle. */
    val state: TernState get() = core.state()

    /** Hands every refused call to [listener] (replacing an earlier one); `null` removes it. */
    fun setErrorListener(listener: TernErrorListener?) {
        if (listener == null) {
            core.clearErrorListener()
        } else {
            core.setErrorListener(object : ErrorListener {
                override fun onError(call: String, error: TernException) = listener.onError(call, error)
            })
        }
    }

    /** Records a custom event. Property values: String, Int, Long, Short, Byte, Float, Double, Boolean. */
    @JvmOverloads
    fun track(name: String, properties: Map<String, Any> = emptyMap()) {
        if (fastId == 0L || !FastTrack.track(fastId, name, properties)) core.track(name, properties.toFfi())
    }

    /** [track], throwing a refusal. */
    @JvmOverloads
    @Throws(TernException::class)
    fun tryTrack(name: String, properties: Map<String, Any> = emptyMap()) =
        core.tryTrack(name, properties.toFfi())

    /** Records a purchase of [quantity] for [amountMicros] millionths of [currency] (ISO 4217). */
    @JvmOverloads
    fun purchase(
        productId: String,
        amountMicros: Long,
        currency: String,
        quantity: Int = 1,
        properties: Map<String, Any> = emptyMap(),
    ) = core.purchase(productId, amountMicros, currency, quantity.toLong(), properties.toFfi())

    /** [purchase], throwing a refusal. */
    @JvmOverloads
    @Throws(TernException::class)
    fun tryPurchase(
        productId: String,
        amountMicros: Long,
        currency: String,
        quantity: Int = 1,
        properties: Map<String, Any> = emptyMap(),
    ) = core.tryPurchase(productId, amountMicros, currency, quantity.toLong(), properties.toFfi())

    /** Sets the user of events recorded from now on; `null` makes them anonymous. */
    fun identify(userId: String?) = core.identify(userId)

    /** [identify], throwing a refusal. */
    @Throws(TernException::class)
    fun tryIdentify(userId: String?) = core.tryIdentify(userId)

    /**
     * Login: links this device's anonymous identity to [userId] (one `alias` event, so the
     * backend merges the anonymous history into the user's), then identifies [userId].
     * [identify] alone records no alias. Call it once per login.
     */
    fun alias(userId: String) = core.alias(userId)

    /** [alias], throwing a refusal. */
    @Throws(TernException::class)
    fun tryAlias(userId: String) = core.tryAlias(userId)

    /**
     * Logout: ends the session, forgets the user and the user properties, and gives the
     * device a new anonymous id (the device id is kept). Flags are evaluated for the device
     * again and the config is fetched for it.
     */
    fun reset() = core.reset()

    /** [reset], throwing a refusal. */
    @Throws(TernException::class)
    fun tryReset() = core.tryReset()

    /** The anonymous id the device store has applied so far; `null` before the SDK opened. */
    val anonymousId: String? get() = core.anonymousId()

    /**
     * The platform's network callback: the kind of network now (`null`: unknown). Events
     * recorded from now on carry it in their batch's context; an unchanged value records
     * nothing. The Android glue calls it.
     */
    fun setNetworkType(network: TernNetworkType?) = core.setNetworkType(network)

    /** [setNetworkType], throwing a refusal. */
    @Throws(TernException::class)
    fun trySetNetworkType(network: TernNetworkType?) = core.trySetNetworkType(network)

    /** The locale changed (BCP 47 tag, `null`: unknown); the Android glue calls it. */
    fun setLocale(locale: String?) = core.setLocale(locale)

    /** [setLocale], throwing a refusal. */
    @Throws(TernException::class)
    fun trySetLocale(locale: String?) = core.trySetLocale(locale)

    /** The time zone changed (IANA name, `null`: unknown); the Android glue calls it. */
    fun setTimeZone(timeZone: String?) = core.setTimeZone(timeZone)

    /** [setTimeZone], throwing a refusal. */
    @Throws(TernException::class)
    fun trySetTimeZone(timeZone: String?) = core.trySetTimeZone(timeZone)

    /** This installation's id (kept across app updates); `null` before the SDK opened. */
    val installId: String? get() = core.installId()

    /**
     * Sets the consent state of [purpose]: [ConsentState.GRANTED] sends the events held while
     * it was pending (in recorded order); [ConsentState.DENIED] deletes them and keeps none
     * later (the calls still succeed, counted in the stats); [ConsentState.PENDING] keeps them
     * on the device, bounded. Ordered with the other calls, durable, persisted.
     */
    fun setConsent(purpose: ConsentPurpose, state: ConsentState) = core.setConsent(purpose, state)

    /** [setConsent], throwing a refusal. */
    @Throws(TernException::class)
    fun trySetConsent(purpose: ConsentPurpose, state: ConsentState) = core.trySetConsent(purpose, state)

    /** The consent state of [purpose] now; `null` before the SDK opened. */
    fun consent(purpose: ConsentPurpose): ConsentState? = core.consent(purpose)

    /**
     * The person asks for their data to be deleted: a deletion request naming this device,
     * the user and the anonymous id is sent upstream (first, whatever the consent and the
     * opt-out, across restarts), then the local data is deleted (new device id).
     */
    fun requestDeletion() = core.requestDeletion()

    /** [requestDeletion], throwing a refusal. */
    @Throws(TernException::class)
    fun tryRequestDeletion() = core.tryRequestDeletion()

    /**
     * Hands over this device's push token: an FCM registration token (the default
     * [provider], no [environment]) or an APNs device token, hex-encoded, with its
     * environment. Call it whenever the platform gives one (every start is fine): a
     * `push_token` event is recorded only when it changed, and again when the user changes
     * and periodically. Not kept while opted out. On Android, `dev.tern.android.TernPush`
     * does this from a `FirebaseMessagingService`.
     */
    @JvmOverloads
    fun setPushToken(token: String, provider: PushProvider = PushProvider.FCM, environment: PushEnvironment? = null) =
        core.setPushToken(provider, environment, token)

    /** [setPushToken], throwing a refusal. */
    @JvmOverloads
    @Throws(TernException::class)
    fun trySetPushToken(token: String, provider: PushProvider = PushProvider.FCM, environment: PushEnvironment? = null) =
        core.trySetPushToken(provider, environment, token)

    /** Records that a push of campaign [campaignId] reached the device. */
    fun pushReceived(campaignId: String) = core.pushReceived(campaignId)

    /** [pushReceived], throwing a refusal. */
    @Throws(TernException::class)
    fun tryPushReceived(campaignId: String) = core.tryPushReceived(campaignId)

    /** Records that the user opened a push of campaign [campaignId], with the [action] chosen (`null`: the default tap). */
    @JvmOverloads
    fun pushOpened(campaignId: String, action: String? = null) = core.pushOpened(campaignId, action)

    /** [pushOpened], throwing a refusal. */
    @JvmOverloads
    @Throws(TernException::class)
    fun tryPushOpened(campaignId: String, action: String? = null) = core.tryPushOpened(campaignId, action)

    /** Sets [set] and removes [unset] user properties. */
    @JvmOverloads
    fun setUserProperties(set: Map<String, Any>, unset: List<String> = emptyList()) =
        core.setUserProperties(set.toFfi(), unset)

    /** [setUserProperties], throwing a refusal. */
    @JvmOverloads
    @Throws(TernException::class)
    fun trySetUserProperties(set: Map<String, Any>, unset: List<String> = emptyList()) =
        core.trySetUserProperties(set.toFfi(), unset)

    /** Switches recording off (`true`) or back on; persisted across restarts. */
    fun optOut(optedOut: Boolean) = core.optOut(optedOut)

    /** [optOut], throwing a refusal. */
    @Throws(TernException::class)
    fun tryOptOut(optedOut: Boolean) = core.tryOptOut(optedOut)

    /** True while opted out (`false` before the instance is open). */
    val isOptedOut: Boolean get() = core.isOptedOut()

    /** Deletes every event recorded before this call, the user id and the device id. */
    fun deleteLocalData() = core.deleteLocalData()

    /** [deleteLocalData], throwing a refusal. */
    @Throws(TernException::class)
    fun tryDeleteLocalData() = core.tryDeleteLocalData()

    /** Starts a new session. */
    fun startSession() = core.startSession()

    /** [startSession], throwing a refusal. */
    @Throws(TernException::class)
    fun tryStartSession() = core.tryStartSession()

    /** Ends the open session. */
    fun endSession() = core.endSession()

    /** [endSession], throwing a refusal. */
    @Throws(TernException::class)
    fun tryEndSession() = core.tryEndSession()

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
     * Requests a flush and waits until the device store is empty — everything recorded
     * was uploaded — or [timeout] passes (negative = 0, [Duration.INFINITE] = no deadline).
     * Returns whether it emptied; `false` when the instance could not start or stopped.
     * Suspends without holding a thread; cancelling the coroutine ends the native wait.
     */
    suspend fun flushAndWait(timeout: Duration = 30.seconds): Boolean = core.flushAndWait(timeout.toFfiMillis())

    /** State and counters. No I/O. */
    val stats: TernStats get() = core.stats()

    /** The config value of [key] as String, Long, Double or Boolean, or `null`. */
    fun configValue(key: String): Any? = core.configValue(key)?.toKotlin()

    /** Every config value. */
    val configValues: Map<String, Any> get() = core.configValues().mapNotNull { (k, v) -> v.toKotlin()?.let { k to it } }.toMap()

    /** The text value of [key], or [default]. */
    fun configString(key: String, default: String): String = core.configString(key, default)

    /** The integer value of [key], or [default]. */
    fun configLong(key: String, default: Long): Long = core.configLong(key, default)

    /** The number value of [key], or [default]. */
    fun configDouble(key: String, default: Double): Double = core.configDouble(key, default)

    /** The boolean value of [key], or [default]. */
    fun configBoolean(key: String, default: Boolean): Boolean = core.configBool(key, default)

    /**
     * The decision of flag [key]. Records its exposure (once per flag, variant, user and config
     * version) unless [TernConfig.Builder.autoExposures] turned that off.
     */
    fun flag(key: String): FlagDecision = core.flag(key)

    /** True when flag [key] is not `Off` (records the exposure as [flag] does). */
    fun isEnabled(key: String): Boolean = core.flagEnabled(key)

    /**
     * Records the exposure of flag [key] as it evaluates now: for flags read early (automatic
     * exposures off) and shown later, call it when the user sees the result. Once per flag,
     * variant, user and config version, also across restarts. Never throws.
     */
    fun recordExposure(key: String) = core.recordExposure(key)

    /** [recordExposure], returning what it did and throwing a refusal. */
    @Throws(TernException::class)
    fun tryRecordExposure(key: String): ExposureOutcome = core.tryRecordExposure(key)

    /** Version, ETag and freshness of the config in use. */
    val configInfo: ConfigInfo get() = core.configInfo()

    /** Asks for the config to be fetched now. Returns at once. */
    fun refreshConfig() = core.refreshConfig()

    /** Calls [listener] on the SDK's `tern-live` thread for every config change, until cancelled. */
    fun addConfigListener(listener: (ConfigChange) -> Unit): Subscription =
        Subscription(core.addConfigListener(object : ConfigChangeListener {
            override fun onConfigChanged(change: ConfigChange) = listener(change)
        }))

    /** Calls [listener] on the SDK's `tern-live` thread with each in-app message to show, until cancelled. */
    fun addMessageListener(listener: (InAppMessage) -> Unit): Subscription =
        Subscription(core.addMessageListener(object : InAppMessageListener {
            override fun onMessage(message: InAppMessage) = listener(message)
        }))

    /** Config changes as a cold [Flow]; collecting registers a listener, cancelling removes it. */
    val configChanges: Flow<ConfigChange>
        get() = callbackFlow {
            val sub = addConfigListener { trySend(it) }
            awaitClose { sub.cancel() }
        }.buffer(64)

    /** In-app messages to show, as a cold [Flow]. */
    val messages: Flow<InAppMessage>
        get() = callbackFlow {
            val sub = addMessageListener { trySend(it) }
            awaitClose { sub.cancel() }
        }.buffer(64)

    /** Records that the user acted on a message ([action] = the button id). */
    fun messageImpression(messageId: String, action: String) = core.messageImpression(messageId, action)

    /** [messageImpression], throwing a refusal. */
    @Throws(TernException::class)
    fun tryMessageImpression(messageId: String, action: String) = core.tryMessageImpression(messageId, action)

    /** Waits until everything recorded is in the device store (tests, orderly exits). */
    suspend fun awaitApplied(timeout: Duration = 5.seconds): Boolean =
        withContext(Dispatchers.IO) { core.waitApplied(timeout.toFfiMillis()) }

    /**
     * Stops recording and closes the store, waiting at most [timeout]. Idempotent.
     * Every reference stays safe: later calls are counted no-ops.
     */
    suspend fun shutdown(timeout: Duration = 5.seconds): ShutdownReport =
        withContext(Dispatchers.IO) { core.shutdown(timeout.toFfiMillis()) }

    /** [shutdown] on this thread. */
    @JvmOverloads
    fun shutdownBlocking(timeout: Duration = 5.seconds): ShutdownReport = core.shutdown(timeout.toFfiMillis())

    /**
     * Shuts down (blocking, up to 5 s). The native object is not destroyed here — it is
     * freed when the last reference is collected — so a reference held elsewhere stays safe.
     */
    override fun close() {
        core.shutdown(5_000u)
    }
}

/** Milliseconds for the native side: negative → 0, infinite or huge → no deadline. */
internal fun Duration.toFfiMillis(): ULong = when {
    isNegative() -> 0uL
    isInfinite() -> ULong.MAX_VALUE
    else -> inWholeMilliseconds.toULong()
}

private fun Map<String, Any>.toFfi(): Map<String, PropertyValue> {
    val out = HashMap<String, PropertyValue>(size * 2)
    for ((key, v) in this) {
        out[key] = when (v) {
            is String -> PropertyValue.Text(v)
            is Boolean -> PropertyValue.Bool(v)
            is Long -> PropertyValue.Integer(v)
            is Int -> PropertyValue.Integer(v.toLong())
            is Short -> PropertyValue.Integer(v.toLong())
            is Byte -> PropertyValue.Integer(v.toLong())
            is Double -> PropertyValue.Real(v)
            is Float -> PropertyValue.Real(v.toDouble())
            is PropertyValue -> v
            // Refused (InvalidEvent naming the property) and counted by the native side.
            else -> PropertyValue.Unsupported(v.javaClass.name)
        }
    }
    return out
}

private fun PropertyValue.toKotlin(): Any? = when (this) {
    is PropertyValue.Text -> value
    is PropertyValue.Integer -> value
    is PropertyValue.Real -> value
    is PropertyValue.Bool -> value
    is PropertyValue.Unsupported -> null
}
