// Wires the platform to a running Tern: the process lifecycle, the default network and
// the WorkManager flush jobs. Calls into the SDK run on one background queue, in order.
package dev.tern.android

import android.content.Context
import android.net.ConnectivityManager
import android.net.Network
import android.net.NetworkCapabilities
import androidx.lifecycle.DefaultLifecycleObserver
import androidx.lifecycle.LifecycleOwner
import androidx.lifecycle.ProcessLifecycleOwner
import dev.tern.Tern
import dev.tern.ffi.TernException
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.ExperimentalCoroutinesApi
import kotlinx.coroutines.SupervisorJob
import kotlinx.coroutines.cancel
import kotlinx.coroutines.launch
import kotlinx.coroutines.withContext

/** The glue of one running instance; [attach] once, [detach] once. */
internal class TernGlue(private val app: Context, private val tern: Tern, private val options: TernAndroidOptions) {
    @OptIn(ExperimentalCoroutinesApi::class)
    private val queue = CoroutineScope(SupervisorJob() + Dispatchers.IO.limitedParallelism(1))
    private var observer: TernLifecycleObserver? = null
    private var network: TernNetworkMonitor? = null

    /** Attaches what [options] asks for. A part that fails is logged; the SDK still records. */
    suspend fun attach() {
        if (options.connectivity) {
            guarded("connectivity callback") {
                network = TernNetworkMonitor(app) { available -> queue.launch { tern.setNetworkAvailable(available) } }
                    .also { it.start() }
            }
        }
        options.periodicFlush?.let { period ->
            guarded("periodic flush job") { TernFlushWorker.schedulePeriodic(app, period) }
        }
        if (options.lifecycle) {
            val obs = TernLifecycleObserver(
                onForeground = { queue.launch { reported("onForeground") { tern.onForeground() } } },
                onBackground = {
                    queue.launch {
                        reported("onBackground") { tern.onBackground() }
                        if (options.backgroundFlush) guarded("background flush job") { TernFlushWorker.scheduleOnce(app) }
                    }
                },
            )
            // Registering replays the current state: a started process reports foreground at once.
            guarded("lifecycle observer") {
                withContext(Dispatchers.Main) { ProcessLifecycleOwner.get().lifecycle.addObserver(obs) }
                observer = obs
            }
        }
    }

    /** Detaches everything and cancels the flush jobs. */
    suspend fun detach() {
        observer?.let { obs ->
            guarded("lifecycle observer") {
                withContext(Dispatchers.Main) { ProcessLifecycleOwner.get().lifecycle.removeObserver(obs) }
            }
        }
        network?.stop()
        guarded("flush jobs") { TernFlushWorker.cancel(app) }
        queue.cancel()
    }

    private inline fun reported(call: String, body: () -> Unit) {
        try {
            body()
        } catch (e: TernException) {
            TernAndroid.warn("$call refused", e)
        }
    }

    private inline fun guarded(what: String, body: () -> Unit) {
        try {
            body()
        } catch (e: Exception) {
            if (e is kotlinx.coroutines.CancellationException) throw e
            TernAndroid.warn("$what not attached", e)
        }
    }
}

/** Process lifecycle → foreground/background. Callbacks come on the main thread and only enqueue. */
internal class TernLifecycleObserver(
    private val onForeground: () -> Unit,
    private val onBackground: () -> Unit,
) : DefaultLifecycleObserver {
    override fun onStart(owner: LifecycleOwner) = onForeground()

    override fun onStop(owner: LifecycleOwner) = onBackground()
}

/**
 * The default network → [report] (true when there is a default network with internet
 * capability). Reports the state at [start] first; callbacks come on the system's
 * connectivity thread.
 */
internal class TernNetworkMonitor(context: Context, private val report: (Boolean) -> Unit) {
    private val cm = context.getSystemService(ConnectivityManager::class.java)
    @Volatile private var current: Network? = null

    private val callback = object : ConnectivityManager.NetworkCallback() {
        override fun onAvailable(network: Network) {
            current = network
            report(true)
        }

        override fun onCapabilitiesChanged(network: Network, networkCapabilities: NetworkCapabilities) {
            current = network
            report(networkCapabilities.hasCapability(NetworkCapabilities.NET_CAPABILITY_INTERNET))
        }

        override fun onLost(network: Network) {
            // A switch of default network reports the new one first: only the loss of the
            // current default means "offline".
            if (network == current) {
                current = null
                report(false)
            }
        }
    }

    /** Whether there is a default network with internet capability now. */
    fun isConnected(): Boolean {
        val network = cm.activeNetwork ?: return false
        return cm.getNetworkCapabilities(network)?.hasCapability(NetworkCapabilities.NET_CAPABILITY_INTERNET) == true
    }

    fun start() {
        current = cm.activeNetwork
        report(isConnected())
        cm.registerDefaultNetworkCallback(callback)
    }

    fun stop() {
        try {
            cm.unregisterNetworkCallback(callback)
        } catch (e: IllegalArgumentException) {
            // never registered
        }
    }
}
