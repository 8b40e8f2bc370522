// `track()` as a Kotlin app calls it on the host JVM (JNA included), timed per call.
// Run by bindings/scripts/bench-kotlin.sh next to the Rust reference
// (bindings/examples/track_bench.rs) in the same run.
package dev.tern

import java.io.File

private fun report(what: String, ns: LongArray) {
    ns.sort()
    fun at(q: Double) = ns[minOf((ns.size * q).toInt(), ns.size - 1)]
    println("$what: calls=${ns.size} p50_ns=${at(0.5)} p99_ns=${at(0.99)} p999_ns=${at(0.999)}")
}

fun main(args: Array<String>) {
    val dir = File(args[0])
    val calls = args.getOrNull(1)?.toInt() ?: 200_000
    val warmup = calls / 10
    val tern = Tern.startBlocking(TernConfig.builder("bench", "bench-key", File(dir, "kotlin")).build())
    kotlinx.coroutines.runBlocking { tern.awaitApplied() }
    val props = mapOf("screen" to "home", "n" to 3)
    val ns = LongArray(calls)
    for (i in 0 until warmup + calls) {
        val t0 = System.nanoTime()
        tern.track("bench_event", props)
        val dt = System.nanoTime() - t0
        if (i >= warmup) ns[i - warmup] = dt
    }
    report("kotlin Tern.track (JNA)", ns)
    check(tern.stats.droppedInvalid == 0uL && tern.stats.refusedNotStarted == 0uL) { "refusals: ${tern.stats}" }
    tern.shutdownBlocking()
}
