// Plain JVM (no android.* imports): compiled and run by tests/examples/test_kotlin_client.py.
//
// The safetensors format (https://github.com/huggingface/safetensors): an 8-byte
// little-endian header length, a JSON header {name: {dtype, shape, data_offsets},
// "__metadata__": {str: str}}, then the tensors' bytes, little-endian, row-major.
// Protocol v1 sends the round's start weights and takes the report in it (float32).
package com.example.devicetune

import java.nio.ByteBuffer
import java.nio.ByteOrder

class Tensor(val shape: IntArray, val data: FloatArray) {
    init {
        require(shape.fold(1) { a, b -> a * b } == data.size) { "shape does not match data" }
    }
}

class SafetensorsFile(val tensors: Map<String, Tensor>, val metadata: Map<String, String>)

object Safetensors {
    fun decode(bytes: ByteArray): SafetensorsFile {
        require(bytes.size >= 8) { "safetensors: shorter than its header length" }
        val buffer = ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN)
        val headerLength = buffer.getLong(0)
        require(headerLength in 2..(bytes.size - 8).toLong()) { "safetensors: bad header length" }
        val header = Json.parse(String(bytes, 8, headerLength.toInt(), Charsets.UTF_8))
            as Map<*, *>
        val start = 8 + headerLength.toInt()
        val tensors = LinkedHashMap<String, Tensor>()
        var metadata = emptyMap<String, String>()
        for ((key, value) in header) {
            val entry = value as Map<*, *>
            if (key == "__metadata__") {
                metadata = entry.entries.associate { (k, v) -> k as String to v as String }
                continue
            }
            require(entry["dtype"] == "F32") { "safetensors: $key is ${entry["dtype"]}, not F32" }
            val shape = (entry["shape"] as List<*>).map { (it as Double).toInt() }.toIntArray()
            val offsets = (entry["data_offsets"] as List<*>).map { (it as Double).toInt() }
            val count = (offsets[1] - offsets[0]) / 4
            require(start + offsets[1] <= bytes.size) { "safetensors: $key runs past the end" }
            val data = FloatArray(count)
            val floats = ByteBuffer.wrap(bytes, start + offsets[0], offsets[1] - offsets[0])
                .order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer()
            floats.get(data)
            tensors[key as String] = Tensor(shape, data)
        }
        return SafetensorsFile(tensors, metadata)
    }

    fun encode(tensors: Map<String, Tensor>, metadata: Map<String, String>): ByteArray {
        val names = tensors.keys.sorted()
        val header = LinkedHashMap<String, Any?>()
        header["__metadata__"] = metadata
        var offset = 0
        for (name in names) {
            val t = tensors.getValue(name)
            header[name] = mapOf("dtype" to "F32", "shape" to t.shape.toList(),
                                 "data_offsets" to listOf(offset, offset + 4 * t.data.size))
            offset += 4 * t.data.size
        }
        var headerBytes = Json.write(header).toByteArray(Charsets.UTF_8)
        val pad = (8 - headerBytes.size % 8) % 8 // the data starts 8-byte aligned
        headerBytes += ByteArray(pad) { ' '.toByte() }
        val out = ByteBuffer.allocate(8 + headerBytes.size + offset).order(ByteOrder.LITTLE_ENDIAN)
        out.putLong(headerBytes.size.toLong())
        out.put(headerBytes)
        for (name in names) for (v in tensors.getValue(name).data) out.putFloat(v)
        return out.array()
    }
}
