// Plain JVM (no android.* imports): compiled and run by tests/examples/test_kotlin_client.py.
//
// A small JSON reader and writer for protocol v1's bodies, so the federation client runs
// on a plain JVM as well as on Android (where org.json would do the same).
package com.example.devicetune

object Json {
    // A double quote as a char (the contract test reads the sources with a string
    // scanner that does not know char literals).
    private const val QUOTE = '\u0022'

    /** Parse a JSON text into Map<String, Any?>, List<Any?>, String, Double, Boolean or null. */
    fun parse(text: String): Any? {
        val reader = Reader(text)
        val value = reader.value()
        reader.skipSpace()
        require(reader.at == text.length) { "trailing characters in JSON at ${reader.at}" }
        return value
    }

    /** Write maps, lists, strings, numbers, booleans and null as JSON. */
    fun write(value: Any?): String = StringBuilder().also { append(it, value) }.toString()

    private fun append(out: StringBuilder, value: Any?) {
        when (value) {
            null -> out.append("null")
            is String -> quote(out, value)
            is Boolean, is Int, is Long -> out.append(value.toString())
            is Number -> {
                val d = value.toDouble()
                require(!d.isNaN() && !d.isInfinite()) { "JSON has no NaN or infinity" }
                out.append(d.toString())
            }
            is Map<*, *> -> {
                out.append('{')
                value.entries.forEachIndexed { i, (k, v) ->
                    if (i > 0) out.append(',')
                    quote(out, k as String)
                    out.append(':')
                    append(out, v)
                }
                out.append('}')
            }
            is List<*> -> {
                out.append('[')
                value.forEachIndexed { i, v -> if (i > 0) out.append(','); append(out, v) }
                out.append(']')
            }
            else -> throw IllegalArgumentException("cannot write ${value.javaClass} as JSON")
        }
    }

    private fun quote(out: StringBuilder, s: String) {
        out.append(QUOTE)
        for (c in s) {
            when {
                c == QUOTE -> out.append("\\\"")
                c == '\\' -> out.append("\\\\")
                c < ' ' -> out.append(String.format("\\u%04x", c.toInt()))
                else -> out.append(c)
            }
        }
        out.append(QUOTE)
    }

    private class Reader(val s: String) {
        var at = 0

        fun skipSpace() {
            while (at < s.length && s[at].isWhitespace()) at++
        }

        fun value(): Any? {
            skipSpace()
            require(at < s.length) { "JSON ends early" }
            return when (s[at]) {
                '{' -> obj()
                '[' -> array()
                QUOTE -> string()
                't' -> word("true", true)
                'f' -> word("false", false)
                'n' -> word("null", null)
                else -> number()
            }
        }

        private fun word(w: String, v: Any?): Any? {
            require(s.startsWith(w, at)) { "bad JSON literal at $at" }
            at += w.length
            return v
        }

        private fun number(): Double {
            val start = at
            while (at < s.length && (s[at].isDigit() || s[at] in "+-.eE")) at++
            return s.substring(start, at).toDoubleOrNull()
                ?: throw IllegalArgumentException("bad JSON number at $start")
        }

        private fun string(): String {
            at++ // the opening quote
            val out = StringBuilder()
            while (true) {
                require(at < s.length) { "unterminated JSON string" }
                val c = s[at++]
                when (c) {
                    QUOTE -> return out.toString()
                    '\\' -> {
                        val e = s[at++]
                        when (e) {
                            'n' -> out.append('\n'); 't' -> out.append('\t')
                            'r' -> out.append('\r'); 'b' -> out.append('\b')
                            'f' -> out.append('\u000c')
                            'u' -> { out.append(s.substring(at, at + 4).toInt(16).toChar()); at += 4 }
                            else -> out.append(e)
                        }
                    }
                    else -> out.append(c)
                }
            }
        }

        private fun obj(): Map<String, Any?> {
            at++
            val out = LinkedHashMap<String, Any?>()
            skipSpace()
            if (s[at] == '}') { at++; return out }
            while (true) {
                skipSpace()
                val key = string()
                skipSpace()
                require(s[at++] == ':') { "':' expected in JSON at ${at - 1}" }
                out[key] = value()
                skipSpace()
                when (s[at++]) {
                    ',' -> {}
                    '}' -> return out
                    else -> throw IllegalArgumentException("',' or '}' expected at ${at - 1}")
                }
            }
        }

        private fun array(): List<Any?> {
            at++
            val out = ArrayList<Any?>()
            skipSpace()
            if (s[at] == ']') { at++; return out }
            while (true) {
                out.add(value())
                skipSpace()
                when (s[at++]) {
                    ',' -> {}
                    ']' -> return out
                    else -> throw IllegalArgumentException("',' or ']' expected at ${at - 1}")
                }
            }
        }
    }
}
