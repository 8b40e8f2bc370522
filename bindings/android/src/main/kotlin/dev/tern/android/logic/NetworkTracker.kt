package dev.tern.android

/**
 * Turns default-network events into "online / offline" reports: online while the
 * current default network has internet capability. A switch of default network
 * reports the new one first, so only the loss of the current default means offline.
 */
internal class NetworkTracker(private val report: (Boolean) -> Unit) : NetworkEvents {
    @Volatile private var current: Any? = null

    /** The state when observation starts; reported first. */
    fun start(state: NetworkState) {
        current = state.active
        report(state.active != null && state.hasInternet)
    }

    override fun onAvailable(network: Any) {
        current = network
        report(true)
    }

    override fun onCapabilitiesChanged(network: Any, hasInternet: Boolean) {
        current = network
        report(hasInternet)
    }

    override fun onLost(network: Any) {
        if (network == current) {
            current = null
            report(false)
        }
    }
}
