@file:Suppress("unused", "UNUSED_PARAMETER")

package android.net

open class Network

open class NetworkCapabilities {
    open fun hasCapability(capability: Int): Boolean = throw UnsupportedOperationException("stub")
    open fun hasTransport(transportType: Int): Boolean = throw UnsupportedOperationException("stub")

    companion object {
        const val TRANSPORT_CELLULAR = 0
        const val TRANSPORT_WIFI = 1
        const val TRANSPORT_ETHERNET = 3
        const val NET_CAPABILITY_INTERNET = 12
        const val NET_CAPABILITY_VALIDATED = 16
    }
}

open class ConnectivityManager {
    open val activeNetwork: Network? get() = throw UnsupportedOperationException("stub")
    open fun getNetworkCapabilities(network: Network?): NetworkCapabilities? = throw UnsupportedOperationException("stub")
    open fun registerDefaultNetworkCallback(networkCallback: NetworkCallback): Unit = throw UnsupportedOperationException("stub")
    open fun unregisterNetworkCallback(networkCallback: NetworkCallback): Unit = throw UnsupportedOperationException("stub")

    open class NetworkCallback {
        open fun onAvailable(network: Network) {}
        open fun onLost(network: Network) {}
        open fun onCapabilitiesChanged(network: Network, networkCapabilities: NetworkCapabilities) {}
    }
}
