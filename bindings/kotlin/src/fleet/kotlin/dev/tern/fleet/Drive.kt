// The drive of a Kotlin pod: the same profiles as the Rust pods (`Fleet::drive_profile`
// in fleet/src/devices.rs), played through the Kotlin layer's calls — `track` with
// properties, `onForeground` / `onBackground` (which start and end sessions and flush,
// as the Android glue calls them), `setNetworkAvailable`.
package dev.tern.fleet

import java.util.concurrent.atomic.AtomicBoolean
import kotlin.math.ln
import kotlin.random.Random

/** How the devices behave (`Profile` in fleet/src/devices.rs, as its JSON reads). */
sealed class Profile {
    /** Every device in the foreground and online the whole drive. */
    object FastCut : Profile()

    /** Foreground sessions and background spells, network losses; means in ms. */
    class Realistic(
        val foregroundMeanMs: Double,
        val backgroundMeanMs: Double,
        val flapEveryMeanMs: Double,
        val flapMeanMs: Double,
    ) : Profile()

    companion object {
        /** Reads `{"profile":"fast_cut"}` or `{"profile":"realistic", "foreground_mean": {"secs":..,"nanos":..}, ...}`. */
        fun fromJson(o: Map<String, Any?>): Profile = when (val p = o["profile"]) {
            "fast_cut" -> FastCut
            "realistic" -> {
                fun ms(key: String): Double {
                    val d = o.req<Map<String, Any?>>(key)
                    return d.long("secs") * 1000.0 + d.long("nanos") / 1e6
                }
                Realistic(ms("foreground_mean"), ms("background_mean"), ms("flap_every_mean"), ms("flap_mean"))
            }
            else -> throw JsonException("unknown profile $p")
        }
    }
}

/** One device's place in the realistic profile (times in ns, `System.nanoTime`). */
private class DeviceState(var foreground: Boolean, var online: Boolean, var switchAt: Long, var flapAt: Long)

/** An exponentially distributed duration with mean [meanMs], in ns. */
private fun exp(rng: Random, meanMs: Double): Long {
    val u = rng.nextDouble(Double.MIN_VALUE, 1.0)
    return (-ln(u) * meanMs * 1e6).toLong()
}

private val NAMES = arrayOf("screen_view", "button_tap", "level_up", "search")

/**
 * Records events round-robin across [devices] at [rate] events/s in total for
 * [durationMs] or until [stop], with the behaviour of [profile]; [progress] gets the
 * number of accepted `track` calls about ten times a second. Under the realistic
 * profile events go to the devices in the foreground, and at the end every device is
 * brought back to the foreground and online so delivery can finish.
 */
fun drive(
    devices: List<Device>,
    behaviour: Behaviour,
    profile: Profile,
    rate: Double,
    durationMs: Long,
    stop: AtomicBoolean,
    progress: (Long) -> Unit,
) {
    val n = devices.size
    if (n == 0) return
    val start = System.nanoTime()
    val end = start + durationMs * 1_000_000
    val rng = Random.Default
    val states = if (profile is Profile.Realistic) {
        // Every device starts at a random point of its first session (memoryless).
        List(n) { DeviceState(true, true, start + exp(rng, profile.foregroundMeanMs), start + exp(rng, profile.flapEveryMeanMs)) }
    } else {
        emptyList()
    }
    var sent = 0L
    var cursor = 0
    var lastProgress = start
    var lastSweep = start
    fun tracked() = devices.sumOf { it.tracked }
    while (!stop.get()) {
        val now = System.nanoTime()
        if (now >= end) break
        if (profile is Profile.Realistic && now - lastSweep >= 50_000_000) {
            lastSweep = now
            sweep(devices, states, profile, behaviour, rng, now)
        }
        val due = ((now - start) / 1e9 * rate).toLong()
        if (sent >= due) {
            Thread.sleep(1)
            continue
        }
        // The next device in the foreground (all of them under fast-cut); none: wait
        // for the next sweep.
        var i = -1
        for (k in 0 until n) {
            val c = (cursor + k) % n
            if (states.isEmpty() || states[c].foreground) {
                i = c
                break
            }
        }
        if (i < 0) {
            Thread.sleep(1)
            continue
        }
        cursor = (i + 1) % n
        val d = devices[i]
        d.track(NAMES[(sent % NAMES.size).toInt()], mapOf("i" to d.tracked, "screen" to "home"))
        sent++
        if (now - lastProgress >= 100_000_000) {
            progress(tracked())
            lastProgress = now
        }
    }
    for ((i, st) in states.withIndex()) {
        if (!st.online) devices[i].tern.setNetworkAvailable(true)
        if (!st.foreground) {
            devices[i].tern.onForeground()
            behaviour.foregrounded++
        }
    }
    progress(tracked())
}

/** Applies the foreground/background switches and network flaps that are due. */
private fun sweep(
    devices: List<Device>,
    states: List<DeviceState>,
    p: Profile.Realistic,
    behaviour: Behaviour,
    rng: Random,
    now: Long,
) {
    for ((i, st) in states.withIndex()) {
        val tern = devices[i].tern
        if (now >= st.switchAt) {
            st.foreground = !st.foreground
            if (st.foreground) {
                tern.onForeground()
                behaviour.foregrounded++
                st.switchAt = now + exp(rng, p.foregroundMeanMs)
            } else {
                tern.onBackground()
                behaviour.backgrounded++
                st.switchAt = now + exp(rng, p.backgroundMeanMs)
            }
        }
        if (now >= st.flapAt) {
            st.online = !st.online
            tern.setNetworkAvailable(st.online)
            if (st.online) {
                st.flapAt = now + exp(rng, p.flapEveryMeanMs)
            } else {
                behaviour.networkLost++
                st.flapAt = now + exp(rng, p.flapMeanMs)
            }
        }
    }
}
