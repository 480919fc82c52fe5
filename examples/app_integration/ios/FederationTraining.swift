import CoreML
import Foundation

// Trains a federated round's task with Core ML's MLUpdateTask. Checked by contract only:
// no Swift compiler runs where devicetune is tested.
//
// The round starts from the server's weights, so they go into the `.mlmodel` first. Core ML
// has no "set weights" call; the adapter finds each updatable layer's current kernel and
// bias (`MLModel.parameterValue`) as packed little-endian Float32 in the file, writes the
// start weights over them, compiles, trains, and reads the result the same way. devicetune
// names the weights `<layer>_kernel` (inputs x outputs, as Keras) and `<layer>_bias`; a
// Core ML inner product stores the kernel outputs x inputs, hence the transposes.
final class CoreMLTrainingAdapter: TrainingAdapter {
    let manifest: ModelManifest
    let examples: [TrainingExample]
    let makeTrainingData: ([TrainingExample]) throws -> MLBatchProvider
    let updatableLayers: [String]
    private var modelFile: Data?

    init(manifest: ModelManifest, updatableLayers: [String], examples: [TrainingExample],
         makeTrainingData: @escaping ([TrainingExample]) throws -> MLBatchProvider) {
        self.manifest = manifest
        self.updatableLayers = updatableLayers
        self.examples = examples
        self.makeTrainingData = makeTrainingData
    }

    func load(model: Data, sha256: String) throws {
        guard sha256 == (try manifest.requireCoreML()).sha256 else {
            throw ProtocolError(status: 0, message: "the round's model is not the installed version: update first")
        }
        modelFile = model
    }

    func train(start: [String: (shape: [Int], values: [Float])],
               instructions: Instructions) async throws -> TrainResult {
        guard var bytes = modelFile.map({ [UInt8]($0) }) else {
            throw ProtocolError(status: 0, message: "train before load")
        }
        guard !instructions.dpSgd, instructions.proximalMu == 0 else {
            // MLUpdateTask has neither per-example clipping nor a proximal term.
            throw ProtocolError(status: 0, message: "Core ML cannot train with DP-SGD or FedProx")
        }
        let folder = FileManager.default.temporaryDirectory
            .appendingPathComponent("round-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let original = try MLModel(contentsOf: try MLModel.compileModel(at: write(bytes, folder, "original.mlmodel")))
        for layer in updatableLayers {
            for (suffix, key) in [("kernel", MLParameterKey.weights), ("bias", MLParameterKey.biases)] {
                guard let weights = start["\(layer)_\(suffix)"] else {
                    throw ProtocolError(status: 0, message: "the round's weights lack \(layer)_\(suffix)")
                }
                let current = try floats(original.parameterValue(for: key.scoped(to: layer)))
                let values = suffix == "kernel" ? transpose(weights.values, rows: weights.shape[0])
                                                : weights.values
                try overwrite(&bytes, current, with: values)
            }
        }
        let compiled = try MLModel.compileModel(at: write(bytes, folder, "start.mlmodel"))
        let configuration = MLModelConfiguration()
        configuration.computeUnits = .cpuOnly
        configuration.parameters = [.epochs: instructions.localEpochs,
                                    .learningRate: instructions.learningRate]
        let trained: MLModel = try await withCheckedThrowingContinuation { continuation in
            do {
                let task = try MLUpdateTask(
                    forModelAt: compiled, trainingData: try makeTrainingData(examples),
                    configuration: configuration,
                    completionHandler: { context in
                        if let error = context.task.error { continuation.resume(throwing: error) }
                        else { continuation.resume(returning: context.model) }
                    })
                task.resume()
            } catch {
                continuation.resume(throwing: error)
            }
        }
        var result: [String: (shape: [Int], values: [Float])] = [:]
        for layer in updatableLayers {
            let kernel = start["\(layer)_kernel"]!
            let updated = try floats(trained.parameterValue(for: MLParameterKey.weights.scoped(to: layer)))
            result["\(layer)_kernel"] = (kernel.shape, transpose(updated, rows: kernel.shape[1]))
            result["\(layer)_bias"] = (start["\(layer)_bias"]!.shape,
                                       try floats(trained.parameterValue(for: MLParameterKey.biases.scoped(to: layer))))
        }
        return TrainResult(weights: result, numExamples: examples.count, trainLoss: .nan)
    }

    private func write(_ bytes: [UInt8], _ folder: URL, _ name: String) throws -> URL {
        let url = folder.appendingPathComponent(name)
        try Data(bytes).write(to: url)
        return url
    }

    private func floats(_ value: Any) throws -> [Float] {
        guard let array = value as? MLMultiArray else {
            throw ProtocolError(status: 0, message: "Core ML returned no weight array")
        }
        return (0..<array.count).map { array[$0].floatValue }
    }

    private func transpose(_ values: [Float], rows: Int) -> [Float] {
        let columns = values.count / rows
        return (0..<values.count).map { i in values[(i % rows) * columns + i / rows] }
    }

    /// Writes `values` where `current` sits packed in `bytes` (exactly once, or it throws).
    private func overwrite(_ bytes: inout [UInt8], _ current: [Float], with values: [Float]) throws {
        let needle = current.flatMap { f in withUnsafeBytes(of: f.bitPattern.littleEndian, Array.init) }
        let replacement = values.flatMap { f in withUnsafeBytes(of: f.bitPattern.littleEndian, Array.init) }
        guard needle.count == replacement.count, !needle.isEmpty else {
            throw ProtocolError(status: 0, message: "the round's weights have another shape")
        }
        let starts = (0...(bytes.count - needle.count)).filter { at in
            bytes[at] == needle[0] && Array(bytes[at..<(at + needle.count)]) == needle
        }
        guard starts.count == 1 else {
            throw ProtocolError(status: 0, message: "cannot locate a layer's weights in the model file")
        }
        bytes.replaceSubrange(starts[0]..<(starts[0] + needle.count), with: replacement)
    }
}
