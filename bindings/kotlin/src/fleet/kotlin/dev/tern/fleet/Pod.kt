// A pod of the fleet whose devices are the Kotlin layer (`dev.tern.Tern`) on the host
// JVM: `tern-fleet run --layer kotlin` starts it where it would start `tern-fleet pod`
// (fleet/src/pods.rs, `PodProgram`), with the same arguments and the same JSON lines on
// stdin/stdout:
//
//   java -Djna.library.path=<dir of libtern_bindings.so> -cp <jar>:<deps> dev.tern.fleet.PodKt \
//        --spec <pod-spec.json> --first <i> --count <n>
//
// out: {"event":"ready","devices":n,"ids":[{"device":..,"user":..},..],"start_ms":..} once
//      every store is open (the parent ranks the relays for these ids itself: the
//      routing rule stays in Rust, in one place); then {"event":"progress","tracked":n}
//      and {"event":"driven","status":{..}} for a drive, {"event":"status","status":{..}},
//      {"event":"down"}.
// in:  {"cmd":"drive","profile":{..},"rate":r,"duration_ms":t}, {"cmd":"stop"},
//      {"cmd":"flush"}, {"cmd":"status"}, {"cmd":"shutdown"} (so is the end of stdin).
//
// stdout carries only these lines; diagnostics go to stderr (the pod's log).
package dev.tern.fleet

import java.io.File
import java.io.PrintStream
import java.util.concurrent.Executors
import java.util.concurrent.LinkedBlockingQueue
import java.util.concurrent.TimeUnit
import java.util.concurrent.atomic.AtomicBoolean
import kotlin.system.exitProcess
import kotlin.time.Duration.Companion.seconds

private val out = PrintStream(java.io.FileOutputStream(java.io.FileDescriptor.out), false, "UTF-8")

/** Writes one protocol line to stdout. */
@Synchronized
private fun emit(line: Map<String, Any?>) {
    out.print(toJson(line))
    out.print('\n')
    out.flush()
}

private fun usage(): Nothing {
    System.err.println("usage: dev.tern.fleet.PodKt --spec <pod-spec.json> --first <index> --count <devices>")
    exitProcess(2)
}

fun main(args: Array<String>) {
    // The generated bindings and JNA print nothing to stdout; keep it that way for
    // anything else the process might print.
    System.setOut(System.err)
    var specPath: String? = null
    var first: Int? = null
    var count: Int? = null
    var k = 0
    while (k < args.size) {
        val v = args.getOrNull(k + 1) ?: usage()
        when (args[k]) {
            "--spec" -> specPath = v
            "--first" -> first = v.toIntOrNull() ?: usage()
            "--count" -> count = v.toIntOrNull() ?: usage()
            else -> usage()
        }
        k += 2
    }
    if (specPath == null || first == null || count == null) usage()
    try {
        serve(PodSpec.read(File(specPath)), first, count)
    } catch (e: Throwable) {
        System.err.println("kotlin pod of devices $first..${first + count}: $e")
        e.printStackTrace()
        exitProcess(2)
    }
    exitProcess(0)
}

/** Starts devices `first until first + count` of [spec] and serves commands until `shutdown` or the end of stdin. */
private fun serve(spec: PodSpec, first: Int, count: Int) {
    val started = System.nanoTime()
    val devices = ArrayList<Device>(count)
    for (i in first until first + count) devices += Device.start(spec, i)
    // Ready once every store is open and has applied the `identify`: the device id and
    // user (so the routing key) are known.
    val deadline = System.nanoTime() + 120_000_000_000
    while (devices.any { !it.ready }) {
        check(System.nanoTime() < deadline) { "device stores did not open within 120 s" }
        Thread.sleep(20)
    }
    emit(
        mapOf(
            "event" to "ready",
            "devices" to count,
            "ids" to devices.map { d -> d.tern.stats.let { mapOf("device" to it.deviceId, "user" to it.userId) } },
            "start_ms" to (System.nanoTime() - started) / 1_000_000,
        ),
    )

    // Commands are read on their own thread, so `stop` reaches a drive in progress.
    val stop = AtomicBoolean(false)
    val commands = LinkedBlockingQueue<Map<String, Any?>>()
    val shutdown = mapOf<String, Any?>("cmd" to "shutdown")
    Thread({
        val input = System.`in`.bufferedReader(Charsets.UTF_8)
        while (true) {
            val line = input.readLine() ?: break
            if (line.isBlank()) continue
            try {
                @Suppress("UNCHECKED_CAST")
                val cmd = parseJson(line) as Map<String, Any?>
                if (cmd["cmd"] == "stop") stop.set(true) else commands.put(cmd)
            } catch (e: RuntimeException) {
                System.err.println("not a pod command: $line ($e)")
            }
        }
        // End of stdin: the parent is gone or done.
        commands.put(shutdown)
    }, "pod-commands").apply { isDaemon = true }.start()

    val behaviour = Behaviour()
    val logins = if (spec.logins) Logins() else null
    val consent = if (spec.consent) Consent() else null
    val push = if (spec.push) Push(devices.size) else null
    val exposures = if (spec.exposureFlags.isNotEmpty()) Exposures(spec.exposureFlags) else null
    val updates = if (spec.appUpdates) AppUpdates(spec) else null
    loop@ while (true) {
        val cmd = commands.take()
        when (cmd["cmd"]) {
            "drive" -> {
                stop.set(false)
                logins?.login(devices)
                consent?.beforeDrive(devices)
                push?.beforeDrive(devices)
                exposures?.readFlags(devices)
                updates?.beforeDrive(devices)
                var last = -1L
                drive(
                    devices, behaviour,
                    Profile.fromJson(cmd.req("profile")),
                    cmd.double("rate"), cmd.long("duration_ms"), stop,
                ) { n ->
                    if (n != last) {
                        last = n
                        emit(mapOf("event" to "progress", "tracked" to n))
                    }
                }
                exposures?.readFlags(devices)
                logins?.logout(devices)
                updates?.afterDrive(devices)
                consent?.afterDrive(devices)
                push?.afterDrive(devices)
                emit(mapOf("event" to "driven", "status" to status(devices, behaviour, logins, consent, push, exposures, updates)))
            }
            "flush" -> devices.forEach { it.tern.flush() }
            "status" -> emit(mapOf("event" to "status", "status" to status(devices, behaviour, logins, consent, push, exposures, updates)))
            "shutdown" -> break@loop
            else -> System.err.println("unknown pod command ${toJson(cmd)}")
        }
    }
    shutdownAll(devices)
    emit(mapOf("event" to "down"))
}

/**
 * Shuts every device down (its journal flushed into its store), 64 at a time: a
 * device's shutdown mostly waits for its connections to close.
 */
private fun shutdownAll(devices: List<Device>) {
    val pool = Executors.newFixedThreadPool(minOf(64, devices.size.coerceAtLeast(1)))
    for (d in devices) pool.execute { d.tern.shutdownBlocking(5.seconds) }
    pool.shutdown()
    pool.awaitTermination(60, TimeUnit.SECONDS)
}
