// The JSON the pod protocol needs (the pod spec, commands, reply lines), written out
// here so the pod runs on the layer's own classpath (JNA, kotlin-stdlib, coroutines) with
// no JSON library. Objects are `Map<String, Any?>` (insertion order kept), arrays
// `List<Any?>`, numbers `Long` when integral and `Double` otherwise.
package dev.tern.fleet

/** A JSON text that could not be read. */
class JsonException(message: String) : RuntimeException(message)

/** Reads one JSON value from [text] (nothing but white space may follow it). */
fun parseJson(text: String): Any? {
    val p = JsonReader(text)
    val v = p.value()
    p.space()
    if (p.i != text.length) throw JsonException("trailing characters at offset ${p.i}")
    return v
}

private class JsonReader(val s: String) {
    var i = 0

    fun space() {
        while (i < s.length && s[i].isWhitespace()) i++
    }

    fun fail(what: String): Nothing = throw JsonException("$what at offset $i")

    fun value(): Any? {
        space()
        if (i >= s.length) fail("unexpected end")
        return when (val c = s[i]) {
            '{' -> obj()
            '[' -> arr()
            '"' -> str()
            't' -> word("true", true)
            'f' -> word("false", false)
            'n' -> word("null", null)
            else -> if (c == '-' || c.isDigit()) num() else fail("unexpected '$c'")
        }
    }

    fun word(w: String, v: Any?): Any? {
        if (!s.startsWith(w, i)) fail("expected $w")
        i += w.length
        return v
    }

    fun obj(): Map<String, Any?> {
        val m = LinkedHashMap<String, Any?>()
        i++
        space()
        if (i < s.length && s[i] == '}') { i++; return m }
        while (true) {
            space()
            if (i >= s.length || s[i] != '"') fail("expected a key")
            val k = str()
            space()
            if (i >= s.length || s[i] != ':') fail("expected ':'")
            i++
            m[k] = value()
            space()
            if (i >= s.length) fail("unexpected end")
            when (s[i++]) {
                ',' -> continue
                '}' -> return m
                else -> { i--; fail("expected ',' or '}'") }
            }
        }
    }

    fun arr(): List<Any?> {
        val l = ArrayList<Any?>()
        i++
        space()
        if (i < s.length && s[i] == ']') { i++; return l }
        while (true) {
            l += value()
            space()
            if (i >= s.length) fail("unexpected end")
            when (s[i++]) {
                ',' -> continue
                ']' -> return l
                else -> { i--; fail("expected ',' or ']'") }
            }
        }
    }

    fun str(): String {
        val b = StringBuilder()
        i++
        while (true) {
            if (i >= s.length) fail("unterminated string")
            val c = s[i++]
            when (c) {
                '"' -> return b.toString()
                '\\' -> {
                    if (i >= s.length) fail("unterminated escape")
                    when (val e = s[i++]) {
                        '"', '\\', '/' -> b.append(e)
                        'b' -> b.append('\b')
                        'f' -> b.append('\u000C')
                        'n' -> b.append('\n')
                        'r' -> b.append('\r')
                        't' -> b.append('\t')
                        'u' -> {
                            if (i + 4 > s.length) fail("short \\u escape")
                            b.append(s.substring(i, i + 4).toIntOrNull(16)?.toChar() ?: fail("bad \\u escape"))
                            i += 4
                        }
                        else -> fail("bad escape '\\$e'")
                    }
                }
                else -> b.append(c)
            }
        }
    }

    fun num(): Any {
        val start = i
        if (s[i] == '-') i++
        while (i < s.length && (s[i].isDigit() || s[i] in ".eE+-")) i++
        val t = s.substring(start, i)
        return t.toLongOrNull() ?: t.toDoubleOrNull() ?: fail("bad number '$t'")
    }
}

/** [v] (maps, lists, strings, numbers, booleans, null) as compact JSON text. */
fun toJson(v: Any?): String = StringBuilder().also { write(it, v) }.toString()

private fun write(b: StringBuilder, v: Any?) {
    when (v) {
        null -> b.append("null")
        is String -> {
            b.append('"')
            for (c in v) {
                when {
                    c == '"' -> b.append("\\\"")
                    c == '\\' -> b.append("\\\\")
                    c == '\n' -> b.append("\\n")
                    c == '\r' -> b.append("\\r")
                    c == '\t' -> b.append("\\t")
                    c < ' ' -> b.append("\\u%04x".format(c.code))
                    else -> b.append(c)
                }
            }
            b.append('"')
        }
        is Boolean, is Int, is Long, is ULong -> b.append(v.toString())
        is Double -> {
            if (!v.isFinite()) throw JsonException("$v is not a JSON number")
            b.append(v.toString())
        }
        is Map<*, *> -> {
            b.append('{')
            var first = true
            for ((k, x) in v) {
                if (!first) b.append(',')
                first = false
                write(b, k.toString())
                b.append(':')
                write(b, x)
            }
            b.append('}')
        }
        is List<*> -> {
            b.append('[')
            v.forEachIndexed { n, x ->
                if (n > 0) b.append(',')
                write(b, x)
            }
            b.append(']')
        }
        else -> throw JsonException("cannot write ${v.javaClass.name} as JSON")
    }
}

/** The member [key] of a JSON object, failing with its name when absent or of another type. */
internal inline fun <reified T> Map<String, Any?>.req(key: String): T =
    this[key] as? T ?: throw JsonException("`$key` missing or not a ${T::class.simpleName} in ${toJson(this)}")

/** A JSON number member as a Long (integral) ... */
internal fun Map<String, Any?>.long(key: String): Long = when (val v = this[key]) {
    is Long -> v
    is Double -> v.toLong()
    else -> throw JsonException("`$key` missing or not a number")
}

/** ... or as a Double. */
internal fun Map<String, Any?>.double(key: String): Double = when (val v = this[key]) {
    is Long -> v.toDouble()
    is Double -> v
    else -> throw JsonException("`$key` missing or not a number")
}
