package dev.tern.android

import dev.tern.ffi.TernNetworkType

/**
 * Turns default-network events into "online / offline" reports — online while the
 * current default network has internet capability; a switch of default network
 * reports the new one first, so only the loss of the current default means offline —
 * and into the kind of the default network for the context ([reportType]: the current
 * default's transport, `NONE` once it is lost).
 */
internal class NetworkTracker(
    private val report: (Boolean) -> Unit,
    private val reportType: (TernNetworkType?) -> Unit = {},
) : NetworkEvents {
    @Volatile private var current: Any? = null

    /** The state when observation starts; reported first. */
    fun start(state: NetworkState) {
        current = state.active
        report(state.active != null && state.hasInternet)
        reportType(if (state.active == null) TernNetworkType.NONE else state.type)
    }

    override fun onAvailable(network: Any) {
        current = network
        report(true)
    }

    override fun onCapabilitiesChanged(network: Any, hasInternet: Boolean) {
        current = network
        report(hasInternet)
    }

    override fun onTransport(network: Any, type: TernNetworkType) {
        if (network == current) reportType(type)
    }

    override fun onLost(network: Any) {
        if (network == current) {
            current = null
            report(false)
            reportType(TernNetworkType.NONE)
        }
    }
}
