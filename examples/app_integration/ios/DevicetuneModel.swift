import CoreML
import Foundation

/// One labelled example for on-device training: an input of `manifest.inputShape`, flattened
/// row-major, and its class label (one of `manifest.classes`).
struct TrainingExample: Sendable {
    let input: [Float]
    let label: String
}

/// What the classifier says about one example.
struct Prediction: Sendable {
    let label: String
    /// Class label -> probability; the probabilities sum to 1.
    let probabilities: [String: Double]
}

/// Reported while `DevicetuneModel.personalize` runs.
enum TrainingProgress: Sendable {
    case began
    case epochEnded(epoch: Int, loss: Double)
}

/// Input the app passed that the model cannot take (wrong size, unknown label).
struct ModelInputError: LocalizedError, Sendable {
    let message: String
    var errorDescription: String? { message }
}

/// devicetune's updatable Core ML classifier (`Model.mlmodel`, export/coreml.py): prediction,
/// personalisation with `MLUpdateTask`, and swapping in a new verified version.
///
/// An actor: Core ML calls on one model are serialised, and a new model is swapped in between
/// calls, never during one. The personal model a training run produces is written to a file
/// (`ModelStore.personalModelURL`), so it survives restarts; it belongs to one version and is
/// dropped when another version is installed (personalise again from the new global model).
actor DevicetuneModel {
    private(set) var manifest: ModelManifest
    private var model: MLModel
    /// The compiled model `model` was loaded from: the version's, or its personal one.
    private var modelURL: URL
    private let store: ModelStore

    /// Opens a verified, compiled version (see `ModelUpdater`), with its personal model if one
    /// was saved and still loads.
    init(version folder: URL, manifest: ModelManifest, store: ModelStore) throws {
        self.manifest = manifest
        self.store = store
        let personal = store.personalModelURL(version: manifest.version)
        if FileManager.default.fileExists(atPath: personal.path),
           let model = try? Self.load(personal, manifest: manifest) {
            self.model = model
            modelURL = personal
        } else {
            modelURL = store.compiledModelURL(in: folder)
            model = try Self.load(modelURL, manifest: manifest)
        }
    }

    /// A copy of the downloaded (uncompiled) `.mlmodel` whose softmax is restricted to the
    /// classes this phone holds (FedRS), for a federated round whose task says
    /// `class-mask`: -1e4 goes into the frozen `class_offset` bias of every other class,
    /// so an update leaves their weights as the server sent them. Compile the copy with
    /// `MLModel.compileModel(at:)` and run `MLUpdateTask` on it as `personalize` does;
    /// predictions keep using the shipped model (zeros there). Core ML refuses a mask
    /// input between the updatable layer and the loss, hence a constant in the file.
    static func restrictedModelFile(_ mlmodel: URL, present: Set<String>,
                                    manifest: ModelManifest, to target: URL) throws {
        guard let offset = try manifest.requireCoreML().classOffsetBiasOffset else {
            throw InvalidModelError("this model version has no class_offset layer; "
                + "train it without a class mask")
        }
        var data = try Data(contentsOf: mlmodel)
        let words = manifest.classes.map {
            (present.contains($0) ? Float(0) : Float(-1.0e4)).bitPattern.littleEndian
        }
        let size = words.count * MemoryLayout<UInt32>.size
        guard offset >= 0, offset + size <= data.count else {
            throw InvalidModelError("class_offset_bias_offset \(offset) is outside the model file")
        }
        words.withUnsafeBytes { data.replaceSubrange(offset..<offset + size, with: $0) }
        try data.write(to: target, options: .atomic)
    }

    /// The class label and probabilities for one example.
    func predict(_ input: [Float]) throws -> Prediction {
        let features = try MLDictionaryFeatureProvider(dictionary: [
            DevicetuneFeatures.input: MLFeatureValue(multiArray: makeInput(input)),
        ])
        let output = try model.prediction(from: features)
        guard let label = output.featureValue(for: DevicetuneFeatures.predictedLabel)?.stringValue,
              let scores = output.featureValue(for: DevicetuneFeatures.probabilities)?.dictionaryValue
        else {
            throw InvalidModelError("the model's outputs are not a devicetune classifier's")
        }
        var probabilities: [String: Double] = [:]
        for (key, value) in scores {
            if let key = key.base as? String { probabilities[key] = value.doubleValue }
        }
        return Prediction(label: label, probabilities: probabilities)
    }

    /// Fine-tunes the model on the user's examples with `MLUpdateTask`, writes the result as
    /// this version's personal model and swaps it in.
    ///
    /// - Parameters:
    ///   - epochs, learningRate: override the model's defaults, clamped to the ranges of
    ///     manifest.json `coreml.parameters` (nil: the defaults devicetune built in).
    ///   - progress: called on Core ML's queue at the start and after every epoch.
    /// - Returns: the loss after the last epoch, or nil if a new version was swapped in
    ///   meanwhile (the result, made from the old version, is then discarded).
    @discardableResult
    func personalize(with examples: [TrainingExample], epochs: Int? = nil,
                     learningRate: Double? = nil,
                     progress: @escaping @Sendable (TrainingProgress) -> Void = { _ in }
    ) async throws -> Double? {
        let version = manifest.version
        let coreml = try manifest.requireCoreML()
        let trainingData = try makeTrainingData(examples)
        let configuration = MLModelConfiguration()
        configuration.computeUnits = .cpuOnly // updates run on the CPU; say so up front
        var parameters: [MLParameterKey: Any] = [:]
        if let epochs, let range = coreml.parameters["epochs"] {
            parameters[.epochs] = Int(range.clamped(Double(epochs)))
        }
        if let learningRate, let range = coreml.parameters["learning_rate"] {
            parameters[.learningRate] = range.clamped(learningRate)
        }
        configuration.parameters = parameters
        let source = modelURL
        let stagingFolder = try store.newStaging()
        defer { try? FileManager.default.removeItem(at: stagingFolder) }
        let staging = stagingFolder.appendingPathComponent("personal.mlmodelc")

        let finalLoss: Double? = try await withCheckedThrowingContinuation { continuation in
            let handlers = MLUpdateProgressHandlers(
                forEvents: [.trainingBegin, .epochEnd],
                progressHandler: { context in
                    switch context.event {
                    case .trainingBegin:
                        progress(.began)
                    case .epochEnd:
                        let epoch = context.metrics[.epochIndex] as? Int ?? -1
                        let loss = context.metrics[.lossValue] as? Double ?? .nan
                        progress(.epochEnded(epoch: epoch, loss: loss))
                    default:
                        break
                    }
                },
                completionHandler: { context in
                    if let error = context.task.error {
                        continuation.resume(throwing: error)
                        return
                    }
                    // Written here, on Core ML's queue, so the (non-Sendable) updated model
                    // never crosses into the actor; only its file does.
                    do {
                        try context.model.write(to: staging)
                        continuation.resume(returning: context.metrics[.lossValue] as? Double)
                    } catch {
                        continuation.resume(throwing: error)
                    }
                })
            do {
                let task = try MLUpdateTask(forModelAt: source, trainingData: trainingData,
                                            configuration: configuration,
                                            progressHandlers: handlers)
                task.resume()
            } catch {
                continuation.resume(throwing: error)
            }
        }

        guard manifest.version == version else { return nil }
        _ = try Self.load(staging, manifest: manifest) // it loads, before it replaces anything
        let personal = store.personalModelURL(version: version)
        try store.replaceItem(at: personal, with: staging)
        model = try Self.load(personal, manifest: manifest)
        modelURL = personal
        return finalLoss
    }

    /// Drops the personal model: back to the version's global model.
    func resetPersonalization() throws {
        let url = store.compiledModelURL(in: store.folder(version: manifest.version))
        model = try Self.load(url, manifest: manifest)
        modelURL = url
        try? FileManager.default.removeItem(at: store.personalModelURL(version: manifest.version))
    }

    /// Swaps in a verified, compiled version: it is loaded and checked first, so a model that
    /// does not load never replaces the running one.
    func replace(with folder: URL, manifest: ModelManifest) throws {
        let url = store.compiledModelURL(in: folder)
        let fresh = try Self.load(url, manifest: manifest)
        model = fresh
        modelURL = url
        self.manifest = manifest
    }

    // MARK: - Inputs

    /// One example as the model's input: shape [1] + `inputShape`, float32.
    private func makeInput(_ values: [Float]) throws -> MLMultiArray {
        let dims = [1] + manifest.inputShape
        guard values.count == manifest.inputShape.reduce(1, *) else {
            throw ModelInputError(message: "an example has \(manifest.inputShape.reduce(1, *)) "
                + "values (shape \(manifest.inputShape)), got \(values.count)")
        }
        let array = try MLMultiArray(shape: dims.map { NSNumber(value: $0) }, dataType: .float32)
        array.withUnsafeMutableBufferPointer(ofType: Float.self) { buffer, strides in
            // Honour the array's strides rather than assume it is packed.
            for flat in values.indices {
                var remainder = flat
                var offset = 0
                for axis in stride(from: dims.count - 1, through: 0, by: -1) {
                    offset += (remainder % dims[axis]) * strides[axis]
                    remainder /= dims[axis]
                }
                buffer[offset] = values[flat]
            }
        }
        return array
    }

    /// The training examples as the spec's training inputs (manifest `coreml.training_inputs`).
    private func makeTrainingData(_ examples: [TrainingExample]) throws -> MLBatchProvider {
        guard !examples.isEmpty else { throw ModelInputError(message: "no examples to train on") }
        let classes = Set(manifest.classes)
        let providers: [MLFeatureProvider] = try examples.map { example in
            guard classes.contains(example.label) else {
                throw ModelInputError(message: "'\(example.label)' is not one of the model's classes")
            }
            return try MLDictionaryFeatureProvider(dictionary: [
                DevicetuneFeatures.trainingInput: MLFeatureValue(multiArray: makeInput(example.input)),
                DevicetuneFeatures.trainingLabel: MLFeatureValue(string: example.label),
            ])
        }
        return MLArrayBatchProvider(array: providers)
    }

    /// Loads a compiled model and checks it is the classifier the manifest describes.
    private static func load(_ url: URL, manifest: ModelManifest) throws -> MLModel {
        let model = try MLModel(contentsOf: url, configuration: MLModelConfiguration())
        let description = model.modelDescription
        let inputs = description.inputDescriptionsByName
        let outputs = description.outputDescriptionsByName
        let training = description.trainingInputDescriptionsByName
        let shape = inputs[DevicetuneFeatures.input]?.multiArrayConstraint?.shape.map(\.intValue)
        guard shape == [1] + manifest.inputShape,
              outputs[DevicetuneFeatures.predictedLabel]?.type == .string,
              outputs[DevicetuneFeatures.probabilities]?.type == .dictionary,
              training[DevicetuneFeatures.trainingInput] != nil,
              training[DevicetuneFeatures.trainingLabel]?.type == .string,
              description.isUpdatable,
              (description.classLabels as? [String]) == manifest.classes
        else {
            throw InvalidModelError("\(url.lastPathComponent) is not the updatable classifier "
                + "manifest.json describes")
        }
        return model
    }
}
