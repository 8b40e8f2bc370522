// TernPlatform over the real Android APIs: ProcessLifecycleOwner, ConnectivityManager,
// WorkManager, Logcat, the main Looper. Binding only; the logic is in logic/.
package dev.tern.android

import android.content.BroadcastReceiver
import android.content.Context
import android.content.Intent
import android.content.IntentFilter
import android.content.pm.PackageManager
import android.net.ConnectivityManager
import android.net.Network
import android.net.NetworkCapabilities
import android.os.Build
import android.os.Handler
import android.os.Looper
import android.util.Log
import androidx.lifecycle.DefaultLifecycleObserver
import androidx.lifecycle.LifecycleOwner
import androidx.lifecycle.ProcessLifecycleOwner
import dev.tern.ffi.DeviceContext
import dev.tern.ffi.TernNetworkType
import java.io.File
import java.util.Locale
import java.util.TimeZone
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

            override fun onCapabilitiesChanged(network: Network, networkCapabilities: NetworkCapabilities) {
                events.onCapabilitiesChanged(network, networkCapabilities.hasCapability(NetworkCapabilities.NET_CAPABILITY_INTERNET))
                events.onTransport(network, typeOf(networkCapabilities))
            }

            override fun onLost(network: Network) = events.onLost(network)
        }
        val active = cm.activeNetwork
        val internet = active != null &&
            cm.getNetworkCapabilities(active)?.hasCapability(NetworkCapabilities.NET_CAPABILITY_INTERNET) == true
        val type = active?.let { typeOf(cm.getNetworkCapabilities(it)) }
        cm.registerDefaultNetworkCallback(callback)
        return NetworkState(active, internet, type) to Detach {
            try {
                cm.unregisterNetworkCallback(callback)
            } catch (e: IllegalArgumentException) {
                // never registered
            }
        }
    }

    override fun deviceContext(): DeviceContext {
        val (locale, timeZone) = localeAndTimeZone()
        val metrics = app.resources.displayMetrics
        val build = try {
            @Suppress("DEPRECATION")
            app.packageManager.getPackageInfo(app.packageName, 0).longVersionCode.toString()
        } catch (e: PackageManager.NameNotFoundException) {
            null
        }
        return DeviceContext(
            appBuild = build, osName = ANDROID_PLATFORM, osVersion = Build.VERSION.RELEASE,
            deviceModel = Build.MODEL, screenWidth = metrics.widthPixels.coerceAtLeast(0).toUInt(),
            screenHeight = metrics.heightPixels.coerceAtLeast(0).toUInt(), locale = locale, timeZone = timeZone,
        )
    }

    override fun localeAndTimeZone(): Pair<String?, String?> =
        Locale.getDefault().toLanguageTag() to TimeZone.getDefault().id

    override fun observeLocaleAndTimeZone(onChange: () -> Unit): Detach {
        val receiver = object : BroadcastReceiver() {
            override fun onReceive(context: Context, intent: Intent) = onChange()
        }
        val filter = IntentFilter().apply {
            addAction(Intent.ACTION_LOCALE_CHANGED)
            addAction(Intent.ACTION_TIMEZONE_CHANGED)
        }
        // System broadcasts: no export flag needed (API 33+ asks for it for app broadcasts only).
        app.registerReceiver(receiver, filter)
        return Detach {
            try {
                app.unregisterReceiver(receiver)
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

    private fun typeOf(c: NetworkCapabilities?): TernNetworkType = when {
        c == null -> TernNetworkType.UNKNOWN
        c.hasTransport(NetworkCapabilities.TRANSPORT_WIFI) -> TernNetworkType.WIFI
        c.hasTransport(NetworkCapabilities.TRANSPORT_CELLULAR) -> TernNetworkType.CELLULAR
        c.hasTransport(NetworkCapabilities.TRANSPORT_ETHERNET) -> TernNetworkType.ETHERNET
        else -> TernNetworkType.UNKNOWN
    }

    companion object {
        const val TAG = "Tern"

        /** One serial queue per process for the glue's calls into the SDK. */
        private val queue: Executor = Executors.newSingleThreadExecutor { r -> Thread(r, "tern-glue").apply { isDaemon = true } }
    }
}
