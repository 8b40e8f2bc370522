package dev.tern.android

import dev.tern.Tern

/**
 * Wires the platform to one instance: the process lifecycle, the default network and
 * the WorkManager flush jobs. [attach] and [detach] may be called from any thread and
 * never wait for the main thread (the lifecycle observer is added there later when
 * they are called elsewhere). Calls into the SDK run on the platform's serial
 * background queue, in order; every part that fails to attach is logged, and the SDK
 * still records.
 */
internal class TernGlue(
    private val platform: TernPlatform,
    private val tern: Tern,
    private val options: TernAndroidOptions,
) {
    private val lock = Any()
    private val attached = mutableListOf<Detach>()
    private var detached = false

    fun attach() {
        if (options.lifecycle) onMain { guarded("lifecycle observer") { attachLifecycle() } }
        platform.background.execute {
            if (options.connectivity) guarded("connectivity callback") { attachNetwork() }
            if (options.deviceContext) guarded("locale and time-zone receiver") { attachLocale() }
            options.periodicFlush?.let { period ->
                guarded("periodic flush job") { platform.schedulePeriodicFlush(period) }
            }
        }
    }

    /** Detaches everything and cancels the flush jobs. */
    fun detach() {
        val parts = synchronized(lock) {
            detached = true
            attached.toList().also { attached.clear() }
        }
        // The lifecycle observer is removed on the main thread (added there too).
        onMain { parts.forEach { guarded("detaching") { it.detach() } } }
        platform.background.execute { guarded("cancelling the flush jobs") { platform.cancelFlushJobs() } }
    }

    private fun attachLifecycle() {
        val detach = platform.observeProcessLifecycle(
            onForeground = { platform.background.execute { tern.onForeground() } },
            onBackground = {
                platform.background.execute {
                    tern.onBackground()
                    if (options.backgroundFlush) guarded("background flush job") { platform.scheduleBackgroundFlush() }
                }
            },
        )
        keep(detach)
    }

    private fun attachNetwork() {
        val tracker = NetworkTracker(
            report = { available -> platform.background.execute { tern.setNetworkAvailable(available) } },
            reportType = { type ->
                if (options.deviceContext) platform.background.execute { tern.setNetworkType(type) }
            },
        )
        val (state, detach) = platform.observeNetwork(tracker)
        tracker.start(state)
        keep(detach)
    }

    private fun attachLocale() {
        val detach = platform.observeLocaleAndTimeZone {
            platform.background.execute {
                val (locale, timeZone) = platform.localeAndTimeZone()
                tern.setLocale(locale)
                tern.setTimeZone(timeZone)
            }
        }
        keep(detach)
    }

    /** Keeps [detach] for [detach]; detaches at once when already detached. */
    private fun keep(detach: Detach) {
        val late = synchronized(lock) {
            if (!detached) attached += detach
            detached
        }
        if (late) guarded("detaching") { detach.detach() }
    }

    private fun onMain(block: () -> Unit) {
        if (platform.isMainThread) block() else platform.postToMain(block)
    }

    private inline fun guarded(what: String, body: () -> Unit) {
        try {
            body()
        } catch (e: Exception) {
            platform.log(Priority.WARN, "$what failed", e)
        }
    }
}
