import Foundation

/// The files of a devicetune model version that the app keeps (see artifacts/emit.py).
enum VersionFiles {
    /// The manifest: hashes, class labels, Core ML update parameters. Covered by the signature.
    static let manifestFile = "manifest.json"
    /// The OpenSSF model-signing bundle over manifest.json and every payload file.
    static let signatureFile = "model.sig"
    /// The iOS model in a build and in every emitted version. The updater downloads whatever
    /// `coreml.file` the signed manifest names; this name is only for the copy the app ships.
    static let modelFile = "Model.mlmodel"
}

/// The feature names of devicetune's updatable Core ML classifier (export/coreml.py).
/// Every use in this app goes through these constants; tests/examples/test_app_integration.py
/// checks each against the spec of a fresh `devicetune build`, in its role.
enum DevicetuneFeatures {
    /// Prediction input: one example, MLMultiArray float32 of shape [1] + manifest `input_shape`.
    static let input = "x"
    /// Prediction output: the most probable class label (String).
    static let predictedLabel = "label"
    /// Prediction output: class label (String) -> probability (Double).
    static let probabilities = "probabilities"
    /// MLUpdateTask input: the example, as `input` (manifest `coreml.training_inputs`).
    static let trainingInput = "x"
    /// MLUpdateTask input: the example's true class label (String).
    static let trainingLabel = "label"
}

/// A version that must not be used: unsigned, signed by another key, tampered with, or not
/// a model this app can run. The message says which.
struct InvalidModelError: LocalizedError, Sendable {
    let message: String
    init(_ message: String) { self.message = message }
    var errorDescription: String? { message }
}

/// The parts of a devicetune `manifest.json` the iOS app acts on.
///
/// Decode only bytes whose sha256 the release signature covers: `VersionVerifier` does that
/// before anything here is trusted. Unknown fields are ignored (the signature already vouches
/// for them); `format_version` guards against a layout this code does not know.
struct ModelManifest: Decodable, Sendable {
    static let supportedFormatVersion = 1

    let formatVersion: Int
    let name: String
    let version: Int
    let classes: [String]
    /// The shape of one example, without the batch dimension (e.g. [128, 9]).
    let inputShape: [Int]
    /// File name -> hex sha256 of every payload file of the version.
    let files: [String: String]
    let coreml: CoreMLEntry?
    /// True when the payload files are encrypted for the app's key: ModelUpdater decrypts
    /// them (VersionDecryption) after the signature verified.
    let encrypted: Bool

    enum CodingKeys: String, CodingKey {
        case formatVersion = "format_version"
        case name, version, classes, files, coreml, encryption
        case inputShape = "input_shape"
    }

    init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        formatVersion = try container.decode(Int.self, forKey: .formatVersion)
        name = try container.decode(String.self, forKey: .name)
        version = try container.decode(Int.self, forKey: .version)
        classes = try container.decode([String].self, forKey: .classes)
        inputShape = try container.decode([Int].self, forKey: .inputShape)
        files = try container.decode([String: String].self, forKey: .files)
        coreml = try container.decodeIfPresent(CoreMLEntry.self, forKey: .coreml)
        encrypted = try container.contains(.encryption) && !container.decodeNil(forKey: .encryption)
    }

    /// Parses manifest.json; every problem is an `InvalidModelError`.
    static func parse(_ data: Data) throws -> ModelManifest {
        let manifest: ModelManifest
        do {
            manifest = try JSONDecoder().decode(ModelManifest.self, from: data)
        } catch {
            throw InvalidModelError("manifest.json is not a devicetune manifest: \(error)")
        }
        guard manifest.formatVersion == supportedFormatVersion else {
            throw InvalidModelError("manifest.json has format_version \(manifest.formatVersion); "
                + "this app reads \(supportedFormatVersion): update the app before this model")
        }
        return manifest
    }

    /// The Core ML entry, or an error for a build without one (`export.coreml = false`).
    func requireCoreML() throws -> CoreMLEntry {
        guard let coreml else { throw InvalidModelError("this version has no Core ML model") }
        guard coreml.file.range(of: #"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"#,
                                options: .regularExpression) != nil else {
            throw InvalidModelError("coreml.file '\(coreml.file)' is not a plain file name")
        }
        return coreml
    }
}

/// The iOS artifact's entry of manifest.json.
struct CoreMLEntry: Decodable, Sendable {
    let file: String
    let sha256: String
    /// The MLUpdateTask training inputs of the spec: the example and its label.
    let trainingInputs: [String]
    /// learning_rate, batch_size, epochs, and the optimizer's own: default and allowed range.
    let parameters: [String: RangeEntry]
    /// Where the frozen `class_offset` layer's bias starts in the `.mlmodel` file: one
    /// little-endian Float32 per class (nil: a build without it). See
    /// `DevicetuneModel.restrictedModelFile`.
    let classOffsetBiasOffset: Int?

    enum CodingKeys: String, CodingKey {
        case file, sha256, parameters
        case trainingInputs = "training_inputs"
        case classOffsetBiasOffset = "class_offset_bias_offset"
    }
}

/// A tunable Core ML update parameter: its default and the range the app may set.
struct RangeEntry: Decodable, Sendable {
    let `default`: Double
    let min: Double
    let max: Double

    enum CodingKeys: String, CodingKey {
        case `default`, min, max
    }

    func clamped(_ value: Double) -> Double { Swift.min(Swift.max(value, min), max) }
}
