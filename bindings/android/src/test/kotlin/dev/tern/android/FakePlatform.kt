// A recording fake of the Android services the glue uses: a "main" thread, the glue's
// serial queue (which a test can hold), ProcessLifecycleOwner, ConnectivityManager's
// default-network callback, WorkManager's two unique jobs and Logcat.
package dev.tern.android

import dev.tern.ffi.DeviceContext
import java.io.File
import java.util.concurrent.CopyOnWriteArrayList
import java.util.concurrent.CountDownLatch
import java.util.concurrent.Executor
import java.util.concurrent.ExecutorService
import java.util.concurrent.Executors
import java.util.concurrent.TimeUnit

internal class FakePlatform(private val dataDir: File, private val process: String = "dev.tern.test") : TernPlatform {
    @Volatile lateinit var mainThread: Thread
    val main: ExecutorService = Executors.newSingleThreadExecutor { r -> Thread(r, "fake-main").also { mainThread = it } }
    private val queue: ExecutorService = Executors.newSingleThreadExecutor { r -> Thread(r, "fake-tern-glue") }

    /** Things the real platform forbids that the glue did. */
    val violations = CopyOnWriteArrayList<String>()
    val lifecycleObservers = CopyOnWriteArrayList<Pair<() -> Unit, () -> Unit>>()
    val networkCallbacks = CopyOnWriteArrayList<NetworkEvents>()
    @Volatile var network = NetworkState(active = "wifi", hasInternet = true)

    /** WorkManager: the unique jobs enqueued (name → how many times), and cancellations. */
    val enqueued = CopyOnWriteArrayList<String>()
    @Volatile var cancelled = 0
    val logs = CopyOnWriteArrayList<Pair<Int, String>>()
    val dataDirThreads = CopyOnWriteArrayList<String>()
    @Volatile var locale: String? = "en-GB"
    @Volatile var timeZone: String? = "Europe/London"
    val localeObservers = CopyOnWriteArrayList<() -> Unit>()

    init {
        main.submit {}.get() // start the main thread
    }

    override val isMainThread: Boolean get() = Thread.currentThread() === mainThread

    override fun postToMain(block: () -> Unit) = main.execute(block)

    override val background: Executor get() = queue

    override fun defaultDataDir(): File {
        dataDirThreads += Thread.currentThread().name
        if (isMainThread) violations += "data directory resolved on the main thread"
        return dataDir
    }

    override fun appVersion(): String = "9.9"

    override fun processName(): String = process

    override fun observeProcessLifecycle(onForeground: () -> Unit, onBackground: () -> Unit): Detach {
        // ProcessLifecycleOwner asserts the main thread.
        if (!isMainThread) violations += "lifecycle observer added off the main thread"
        val o = onForeground to onBackground
        lifecycleObservers += o
        return Detach {
            if (!isMainThread) violations += "lifecycle observer removed off the main thread"
            lifecycleObservers -= o
        }
    }

    override fun observeNetwork(events: NetworkEvents): Pair<NetworkState, Detach> {
        networkCallbacks += events
        return network to Detach { networkCallbacks -= events }
    }

    override fun deviceContext(): DeviceContext {
        if (isMainThread) violations += "device context read on the main thread"
        return DeviceContext(appBuild = "99", osName = "android", osVersion = "14", deviceModel = "Fake 1",
            screenWidth = 1080u, screenHeight = 2400u, locale = locale, timeZone = timeZone)
    }

    override fun localeAndTimeZone(): Pair<String?, String?> = locale to timeZone

    override fun observeLocaleAndTimeZone(onChange: () -> Unit): Detach {
        localeObservers += onChange
        return Detach { localeObservers -= onChange }
    }

    /** The system broadcasts a locale or time-zone change. */
    fun changeLocale(locale: String?, timeZone: String?) {
        this.locale = locale
        this.timeZone = timeZone
        localeObservers.forEach { it() }
    }

    override fun schedulePeriodicFlush(period: kotlin.time.Duration) {
        enqueued += "periodic:$period"
    }

    override fun scheduleBackgroundFlush() {
        enqueued += "background"
    }

    override fun cancelFlushJobs() {
        cancelled++
    }

    override fun log(priority: Int, message: String, error: Throwable?) {
        logs += priority to message
    }

    /** Runs [block] on the fake main thread and waits for it. */
    fun <T> onMain(block: () -> T): T = main.submit<T> { block() }.get(60, TimeUnit.SECONDS)

    /** Waits until everything queued on the main thread and the glue's queue so far has run. */
    fun drain() {
        repeat(2) {
            main.submit {}.get(60, TimeUnit.SECONDS)
            queue.submit {}.get(60, TimeUnit.SECONDS)
        }
    }

    /** Holds the glue's queue until the returned latch is counted down. */
    fun holdQueue(): CountDownLatch {
        val release = CountDownLatch(1)
        queue.execute { release.await() }
        return release
    }

    fun foreground() = onMain { lifecycleObservers.forEach { it.first() } }

    fun background() = onMain { lifecycleObservers.forEach { it.second() } }

    fun close() {
        main.shutdownNow()
        queue.shutdownNow()
    }
}
