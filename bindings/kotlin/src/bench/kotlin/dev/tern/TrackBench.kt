// `track()` as a Kotlin app calls it on the host JVM (JNA included), timed per call:
// the layer's `Tern.track` (the native fast path, bindings/src/fast.rs) and, for
// comparison, the generated uniffi method `TernCore.track` with the layer's property
// conversion (the path `Tern.track` took before). Run by bindings/scripts/bench-kotlin.sh
// next to the Rust reference (bindings/examples/track_bench.rs) in the same run.
package dev.tern

import dev.tern.ffi.PropertyValue
import dev.tern.ffi.TernCore
import dev.tern.ffi.TernOptions
import java.io.File

private fun report(what: String, ns: LongArray) {
    ns.sort()
    fun at(q: Double) = ns[minOf((ns.size * q).toInt(), ns.size - 1)]
    println("$what: calls=${ns.size} p50_ns=${at(0.5)} p99_ns=${at(0.99)} p999_ns=${at(0.999)}")
}

private inline fun timed(calls: Int, call: () -> Unit): LongArray {
    val warmup = calls / 10
    val ns = LongArray(calls)
    for (i in 0 until warmup + calls) {
        val t0 = System.nanoTime()
        call()
        val dt = System.nanoTime() - t0
        if (i >= warmup) ns[i - warmup] = dt
    }
    return ns
}

fun main(args: Array<String>) {
    val dir = File(args[0])
    val calls = args.getOrNull(1)?.toInt() ?: 200_000
    val props = mapOf("screen" to "home", "n" to 3)

    val tern = Tern.startBlocking(TernConfig.builder("bench", "bench-key", File(dir, "kotlin")).build())
    kotlinx.coroutines.runBlocking { tern.awaitApplied() }
    check(FastTrack.available) { "the fast path is not bound" }
    report("kotlin Tern.track (JNA, fast path)", timed(calls) { tern.track("bench_event", props) })
    val s = tern.stats
    check(s.droppedInvalid == 0uL && s.refusedNotStarted == 0uL && s.eventsRecorded >= calls.toULong()) { "refusals: $s" }
    tern.shutdownBlocking()

    val core = TernCore()
    core.open(TernOptions(appId = "bench", appKey = "bench-key", dataDir = File(dir, "generated").path))
    core.waitApplied(30_000u)
    report("kotlin TernCore.track (JNA, generated)", timed(calls) {
        core.track("bench_event", props.mapValues { (_, v) ->
            when (v) {
                is String -> PropertyValue.Text(v)
                is Int -> PropertyValue.Integer(v.toLong())
                else -> PropertyValue.Unsupported(v.javaClass.name)
            }
        })
    })
    check(core.stats().droppedInvalid == 0uL) { "refusals: ${core.stats()}" }
    core.shutdown(30_000u)
}
