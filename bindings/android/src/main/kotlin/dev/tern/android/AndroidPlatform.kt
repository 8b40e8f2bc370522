// TernPlatform over the real Android APIs: ProcessLifecycleOwner, ConnectivityManager,
// WorkManager, Logcat, the main Looper. Binding only; the logic is in logic/.
package dev.tern.android

import android.content.Context
import android.content.pm.PackageManager
import android.net.ConnectivityManager
import android.net.Network
import android.net.NetworkCapabilities
import android.os.Handler
import android.os.Looper
import android.util.Log
import androidx.lifecycle.DefaultLifecycleObserver
import androidx.lifecycle.LifecycleOwner
import androidx.lifecycle.ProcessLifecycleOwner
import java.io.File
import java.util.concurrent.Executor
import java.util.concurrent.Executors
import kotlin.time.Duration

internal class AndroidPlatform(private val app: Context) : TernPlatform {
    override val isMainThread: Boolean get() = Looper.myLooper() == Looper.getMainLooper()

    override fun postToMain(block: () -> Unit) {
        Handler(Looper.getMainLooper()).post(block)
    }

    override val background: Executor get() = queue

    override fun defaultDataDir(): File = TernAndroid.defaultDataDir(app)

    override fun appVersion(): String? = try {
        @Suppress("DEPRECATION")
        app.packageManager.getPackageInfo(app.packageName, 0).versionName
    } catch (e: PackageManager.NameNotFoundException) {
        null
    }

    override fun processName(): String = try {
        File("/proc/self/cmdline").readText().trimEnd('\u0000')
    } catch (e: Exception) {
        app.packageName
    }

    override fun observeProcessLifecycle(onForeground: () -> Unit, onBackground: () -> Unit): Detach {
        val observer = object : DefaultLifecycleObserver {
            override fun onStart(owner: LifecycleOwner) = onForeground()

            override fun onStop(owner: LifecycleOwner) = onBackground()
        }
        // Adding replays the current state: a started process reports foreground at once.
        val lifecycle = ProcessLifecycleOwner.get().lifecycle
        lifecycle.addObserver(observer)
        return Detach { lifecycle.removeObserver(observer) }
    }

    override fun observeNetwork(events: NetworkEvents): Pair<NetworkState, Detach> {
        val cm = app.getSystemService(ConnectivityManager::class.java)
        val callback = object : ConnectivityManager.NetworkCallback() {
            override fun onAvailable(network: Network) = events.onAvailable(network)

            override fun onCapabilitiesChanged(network: Network, networkCapabilities: NetworkCapabilities) =
                events.onCapabilitiesChanged(network, networkCapabilities.hasCapability(NetworkCapabilities.NET_CAPABILITY_INTERNET))

            override fun onLost(network: Network) = events.onLost(network)
        }
        val active = cm.activeNetwork
        val internet = active != null &&
            cm.getNetworkCapabilities(active)?.hasCapability(NetworkCapabilities.NET_CAPABILITY_INTERNET) == true
        cm.registerDefaultNetworkCallback(callback)
        return NetworkState(active, internet) to Detach {
            try {
                cm.unregisterNetworkCallback(callback)
            } catch (e: IllegalArgumentException) {
                // never registered
            }
        }
    }

    override fun schedulePeriodicFlush(period: Duration) = TernFlushWorker.schedulePeriodic(app, period)

    override fun scheduleBackgroundFlush() = TernFlushWorker.scheduleOnce(app)

    override fun cancelFlushJobs() = TernFlushWorker.cancel(app)

    override fun log(priority: Int, message: String, error: Throwable?) {
        Log.println(priority, TAG, if (error == null) message else "$message\n${Log.getStackTraceString(error)}")
    }

    companion object {
        const val TAG = "Tern"

        /** One serial queue per process for the glue's calls into the SDK. */
        private val queue: Executor = Executors.newSingleThreadExecutor { r -> Thread(r, "tern-glue").apply { isDaemon = true } }
    }
}
