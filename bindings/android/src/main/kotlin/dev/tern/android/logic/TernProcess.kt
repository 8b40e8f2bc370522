package dev.tern.android

import dev.tern.LogLevel
import dev.tern.ShutdownReport
import dev.tern.Tern
import dev.tern.TernConfig
import dev.tern.ffi.TernException
import kotlin.time.Duration
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.flow.MutableStateFlow
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.withContext
import kotlinx.coroutines.withTimeoutOrNull

/**
 * The process's Tern, as [TernAndroid] exposes it: there is always a [current]
 * instance — not started until [start], so calls made before are kept (bounded, by the
 * native side) — and [start] returns it at once, opening it on the platform's
 * background queue. [stop] shuts it down (references held elsewhere become counted
 * no-ops) and puts a fresh not-started instance in its place.
 */
internal class TernProcess {
    private sealed class Phase {
        object Idle : Phase()
        object Opening : Phase()
        class Running(val tern: Tern) : Phase()
        class Failed(val error: Throwable) : Phase()
    }

    private val lock = Any()
    @Volatile private var instance: Tern = Tern.create()
    private var glue: TernGlue? = null
    private val phase = MutableStateFlow<Phase>(Phase.Idle)
    @Volatile private var sinkInstalled = false

    /** The process's instance (never null). */
    val current: Tern get() = instance

    /** Whether [start] was called for [current]. */
    val isStarted: Boolean get() = phase.value != Phase.Idle

    fun start(
        platform: TernPlatform,
        appId: String,
        appKey: String,
        options: TernAndroidOptions,
        configure: TernConfig.Builder.() -> Unit,
    ): Tern {
        val tern = synchronized(lock) {
            if (phase.value != Phase.Idle) return instance
            phase.value = Phase.Opening
            installLogSink(platform, options.logLevel)
            instance.also { glue = TernGlue(platform, it, options).also { g -> g.attach() } }
        }
        platform.background.execute { open(platform, tern, appId, appKey, options, configure) }
        return tern
    }

    private fun open(
        platform: TernPlatform,
        tern: Tern,
        appId: String,
        appKey: String,
        options: TernAndroidOptions,
        configure: TernConfig.Builder.() -> Unit,
    ) {
        val outcome: Phase = try {
            val builder = TernConfig.builder(appId, appKey, options.dataDir ?: platform.defaultDataDir())
                .platform(ANDROID_PLATFORM)
            platform.appVersion()?.let { builder.appVersion(it) }
            if (options.deviceContext) builder.context(platform.deviceContext())
            builder.configure()
            tern.openBlocking(builder.build())
            Phase.Running(tern)
        } catch (e: TernException.DataDirInUse) {
            platform.log(
                Priority.ERROR,
                "the data directory ${e.path} is in use by another process, so Tern is off in process " +
                    "${platform.processName()}: its calls are counted no-ops. To record from this process, give it " +
                    "its own TernAndroidOptions.dataDir (it then counts as a separate device).",
            )
            Phase.Failed(e)
        } catch (e: TernException.ShutDown) {
            Phase.Failed(e) // stopped before it opened
        } catch (e: Exception) {
            // Invalid config, or the configure lambda threw: the instance stays a counted no-op.
            platform.log(Priority.ERROR, "Tern did not start; its calls are counted no-ops", e)
            Phase.Failed(e)
        }
        synchronized(lock) {
            if (instance === tern && phase.value == Phase.Opening) phase.value = outcome
        }
    }

    /** Waits for [start] to open the instance, at most [timeout]; `null` if it did not (or failed). */
    suspend fun awaitStarted(timeout: Duration): Tern? = withTimeoutOrNull(timeout) {
        when (val p = phase.first { it is Phase.Running || it is Phase.Failed }) {
            is Phase.Running -> p.tern
            else -> null
        }
    }

    /**
     * Detaches the glue, cancels the flush jobs and shuts the instance down (waiting at
     * most [timeout], off the caller's thread). `null` when it was not started.
     */
    suspend fun stop(timeout: Duration): ShutdownReport? {
        val (tern, g) = synchronized(lock) {
            if (phase.value == Phase.Idle) return null
            val t = instance
            val g = glue
            instance = Tern.create()
            glue = null
            phase.value = Phase.Idle
            t to g
        }
        g?.detach()
        return withContext(Dispatchers.IO) { tern.shutdown(timeout) }
    }

    private fun installLogSink(platform: TernPlatform, level: LogLevel) {
        if (sinkInstalled) {
            Tern.setLogLevel(level)
            return
        }
        sinkInstalled = true
        try {
            Tern.installLogSink({ lvl, target, message -> platform.log(logcatPriority(lvl), "$target: $message") }, level)
        } catch (e: Exception) {
            platform.log(Priority.WARN, "the SDK's log sink was not installed", e)
        }
    }
}

/** The Logcat priority of an SDK log level. */
internal fun logcatPriority(level: LogLevel): Int = when (level) {
    LogLevel.ERROR -> Priority.ERROR
    LogLevel.WARN -> Priority.WARN
    LogLevel.INFO -> Priority.INFO
    LogLevel.DEBUG -> Priority.DEBUG
    LogLevel.TRACE, LogLevel.OFF -> Priority.VERBOSE
}
