import CoreML
import Foundation

/// The registry could not be reached or answered with an error. Retry later.
struct RegistryError: LocalizedError, Sendable {
    let message: String
    var errorDescription: String? { message }
}

/// Reads a devicetune registry (`devicetune registry serve`, src/devicetune/registry/api.py).
/// Reads need no token. App Transport Security requires HTTPS (allow an exception only for a
/// registry on a laptop during development).
struct RegistryClient: Sendable {
    /// e.g. `https://models.example.com`.
    let baseURL: URL
    var session: URLSession = .shared

    /// The version this device runs under the model's staged rollout or A/B test.
    func latestVersion(name: String, deviceID: String) async throws -> Int {
        let url = try endpoint("/v1/models/\(name)/latest", query: [
            URLQueryItem(name: "device_id", value: deviceID),
            URLQueryItem(name: "platform", value: "ios"),
        ])
        let (data, response) = try await session.data(from: url)
        try Self.check(response, data: data, url: url)
        do {
            return try JSONDecoder().decode(LatestAnswer.self, from: data).version
        } catch {
            throw RegistryError(message: "the registry's answer is not the expected JSON: \(error)")
        }
    }

    /// Downloads manifest.json of a version, byte for byte as signed.
    func downloadManifest(name: String, version: Int, to target: URL) async throws {
        try await download(endpoint("/v1/models/\(name)/versions/\(version)/manifest"),
                           to: target, maxBytes: 4 << 20)
    }

    /// Downloads one file of a version (model.sig, Model.mlmodel, ...).
    func downloadFile(name: String, version: Int, file: String, to target: URL,
                      maxBytes: Int64) async throws {
        try await download(endpoint("/v1/models/\(name)/versions/\(version)/files/\(file)"),
                           to: target, maxBytes: maxBytes)
    }

    private func download(_ url: URL, to target: URL, maxBytes: Int64) async throws {
        let (temporary, response) = try await session.download(from: url)
        defer { try? FileManager.default.removeItem(at: temporary) }
        if (response as? HTTPURLResponse)?.statusCode != 200 {
            try Self.check(response, data: (try? Data(contentsOf: temporary)) ?? Data(), url: url)
        }
        let size = try temporary.resourceValues(forKeys: [.fileSizeKey]).fileSize ?? 0
        guard size <= maxBytes else {
            throw RegistryError(message: "GET \(url.path): \(size) bytes, more than \(maxBytes)")
        }
        try FileManager.default.moveItem(at: temporary, to: target)
    }

    private func endpoint(_ path: String, query: [URLQueryItem] = []) throws -> URL {
        guard var components = URLComponents(url: baseURL, resolvingAgainstBaseURL: false) else {
            throw RegistryError(message: "\(baseURL) is not a registry URL")
        }
        // Keep a base path (https://host/registry) in front of the API path.
        let base = components.path.trimmingCharacters(in: CharacterSet(charactersIn: "/"))
        components.path = base.isEmpty ? path : "/" + base + path
        components.queryItems = query.isEmpty ? nil : query
        guard let url = components.url else { throw RegistryError(message: "bad path \(path)") }
        return url
    }

    private static func check(_ response: URLResponse, data: Data, url: URL) throws {
        let status = (response as? HTTPURLResponse)?.statusCode ?? 0
        guard status == 200 else {
            // The registry's errors are {"detail": "..."}: say what it said.
            let detail = String(decoding: data.prefix(500), as: UTF8.self)
            throw RegistryError(message: "GET \(url.path): HTTP \(status) \(detail)")
        }
    }

    private struct LatestAnswer: Decodable {
        let version: Int
        enum CodingKeys: String, CodingKey { case version }
    }
}

/// The model versions on the device, under Application Support/devicetune/NAME/:
///
///     versions/7/              manifest.json, model.sig, Model.mlmodel, compiled.mlmodelc
///     current.json             {"version": 7}: the version in use, replaced atomically
///     personal/7.mlmodelc      the personal model MLUpdateTask made from version 7
///     staging-*                downloads and training in progress; removed at start-up
///
/// A version folder is complete (verified and compiled) before current.json names it, so a
/// crash at any point leaves the old version or the new one in use.
struct ModelStore: Sendable {
    static let compiledModelName = "compiled.mlmodelc"

    let modelName: String
    let root: URL

    init(modelName: String) throws {
        self.modelName = modelName
        let support = try FileManager.default.url(for: .applicationSupportDirectory,
                                                  in: .userDomainMask, appropriateFor: nil,
                                                  create: true)
        root = support.appendingPathComponent("devicetune/\(modelName)", isDirectory: true)
        for folder in ["versions", "personal"] {
            try FileManager.default.createDirectory(at: root.appendingPathComponent(folder),
                                                    withIntermediateDirectories: true)
        }
        let leftovers = (try? FileManager.default.contentsOfDirectory(atPath: root.path)) ?? []
        for name in leftovers where name.hasPrefix("staging-") {
            try? FileManager.default.removeItem(at: root.appendingPathComponent(name))
        }
    }

    func folder(version: Int) -> URL {
        root.appendingPathComponent("versions/\(version)", isDirectory: true)
    }

    func compiledModelURL(in folder: URL) -> URL {
        folder.appendingPathComponent(Self.compiledModelName, isDirectory: true)
    }

    func personalModelURL(version: Int) -> URL {
        root.appendingPathComponent("personal/\(version).mlmodelc", isDirectory: true)
    }

    /// The version in use, or nil before the first install.
    func currentVersion() -> Int? {
        guard let data = try? Data(contentsOf: root.appendingPathComponent("current.json")),
              let pointer = try? JSONDecoder().decode(Pointer.self, from: data) else { return nil }
        return pointer.version
    }

    func newStaging() throws -> URL {
        let url = root.appendingPathComponent("staging-\(UUID().uuidString)", isDirectory: true)
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: false)
        return url
    }

    /// Compiles the verified Model.mlmodel of a staging folder beside it.
    func compile(in folder: URL, manifest: ModelManifest) async throws {
        let source = folder.appendingPathComponent(try manifest.requireCoreML().file)
        let compiled = try await MLModel.compileModel(at: source) // a temporary location
        try FileManager.default.moveItem(at: compiled, to: compiledModelURL(in: folder))
    }

    /// Moves a verified, compiled staging folder into place as `version` (not yet in use).
    func commit(staging: URL, version: Int) throws -> URL {
        let target = folder(version: version)
        try? FileManager.default.removeItem(at: target) // a leftover of an unfinished install
        try FileManager.default.moveItem(at: staging, to: target)
        return target
    }

    /// Makes `version` the one in use, atomically, and removes every other version and
    /// every personal model of another version.
    func makeCurrent(version: Int) throws {
        try JSONEncoder().encode(Pointer(version: version))
            .write(to: root.appendingPathComponent("current.json"), options: .atomic)
        for (folder, keep) in [("versions", String(version)), ("personal", "\(version).mlmodelc")] {
            let url = root.appendingPathComponent(folder, isDirectory: true)
            let names = (try? FileManager.default.contentsOfDirectory(atPath: url.path)) ?? []
            for name in names where name != keep {
                try? FileManager.default.removeItem(at: url.appendingPathComponent(name))
            }
        }
    }

    /// Puts `replacement` at `url`: an atomic swap when `url` exists, else a move.
    func replaceItem(at url: URL, with replacement: URL) throws {
        if FileManager.default.fileExists(atPath: url.path) {
            _ = try FileManager.default.replaceItemAt(url, withItemAt: replacement)
        } else {
            try FileManager.default.moveItem(at: replacement, to: url)
        }
    }

    private struct Pointer: Codable {
        let version: Int
        enum CodingKeys: String, CodingKey { case version }
    }
}

/// Keeps the app's model current: asks the registry which version this device should run,
/// downloads manifest.json, model.sig and the Core ML model, verifies them, compiles the
/// model, and only then swaps it in. Until then the running model is untouched.
///
///     let verifier = VersionVerifier(signatures: try SignatureVerifier(publicKeyPEM: releaseKey),
///                                    modelName: "har")
///     let store = try ModelStore(modelName: "har")
///     let model = try await ModelUpdater.openInstalled(store: store, verifier: verifier,
///         bundledVersion: Bundle.main.url(forResource: "devicetune", withExtension: nil)!)
///     let updater = ModelUpdater(registry: RegistryClient(baseURL: registryURL), store: store,
///                                verifier: verifier, deviceID: deviceID)
///     let outcome = try await updater.update(model) // e.g. from a BGProcessingTask
///
/// Weights-only updates: an emitted version also holds `update.npz`, the new weights alone.
/// Core ML has no `set_weights`; applying them means editing the spec's inner-product layers,
/// which is what devicetune does on the server when it rebuilds Model.mlmodel for each
/// version. So the app downloads the rebuilt Model.mlmodel.
struct ModelUpdater: Sendable {
    let registry: RegistryClient
    let store: ModelStore
    let verifier: VersionVerifier
    let deviceID: String
    /// The app's key for versions emitted with emit.encrypt_for (a Secure Enclave key).
    var decryption: VersionDecryption? = nil

    enum Outcome: Sendable, Equatable {
        case upToDate(version: Int)
        case installed(version: Int, previous: Int?)
    }

    /// Brings `model` to the version the registry assigns this device (which can be lower
    /// than the installed one when a rollout is rolled back).
    ///
    /// Throws `RegistryError` when the registry cannot be reached (retry later) and
    /// `InvalidModelError` when the version fails verification (the running model stays).
    func update(_ model: DevicetuneModel) async throws -> Outcome {
        let name = store.modelName
        let version = try await registry.latestVersion(name: name, deviceID: deviceID)
        let installed = store.currentVersion()
        if version == installed { return .upToDate(version: version) }
        let staging = try store.newStaging()
        defer { try? FileManager.default.removeItem(at: staging) } // gone after commit
        // The signature and the manifest first: both small, and nothing else is downloaded
        // on the word of a manifest the release key has not vouched for.
        try await registry.downloadFile(
            name: name, version: version, file: VersionFiles.signatureFile,
            to: staging.appendingPathComponent(VersionFiles.signatureFile), maxBytes: 4 << 20)
        try await registry.downloadManifest(
            name: name, version: version,
            to: staging.appendingPathComponent(VersionFiles.manifestFile))
        let signed = try verifier.verifyManifest(in: staging, expectedVersion: version)
        let coreml = try signed.requireCoreML()
        if signed.encrypted {
            // Decrypted only after the signature verified and the .enc file matched it.
            guard let decryption else {
                throw InvalidModelError("version \(version) is encrypted (emit.encrypt_for) and this app has no key")
            }
            let encrypted = coreml.file + VersionDecryption.encryptedSuffix
            try await registry.downloadFile(
                name: name, version: version, file: encrypted,
                to: staging.appendingPathComponent(encrypted), maxBytes: 512 << 20)
            guard try sha256(ofFileAt: staging.appendingPathComponent(encrypted)) == signed.files[encrypted] else {
                throw InvalidModelError("\(encrypted) does not match its signed sha256")
            }
            let plain = try decryption.decrypt(
                manifest: try Data(contentsOf: staging.appendingPathComponent(VersionFiles.manifestFile))
            ) { try Data(contentsOf: staging.appendingPathComponent($0)) }
            guard let model = plain[coreml.file] else {
                throw InvalidModelError("the encrypted version has no \(coreml.file)")
            }
            try model.write(to: staging.appendingPathComponent(coreml.file))
        } else {
            try await registry.downloadFile(
                name: name, version: version, file: coreml.file,
                to: staging.appendingPathComponent(coreml.file), maxBytes: 512 << 20)
        }
        let manifest = try verifier.verifyFolder(staging, expectedVersion: version)
        try await store.compile(in: staging, manifest: manifest)
        let folder = try store.commit(staging: staging, version: version)
        try await model.replace(with: folder, manifest: manifest) // loads it first
        try store.makeCurrent(version: version)
        return .installed(version: version, previous: installed)
    }

    /// Opens the installed version, re-verified, or installs the version the app ships on
    /// first run. `bundledVersion` is a folder reference in the app bundle holding
    /// manifest.json, model.sig and Model.mlmodel of a signed `devicetune build`, copied as
    /// files (not compiled by Xcode), so it is verified like any download.
    static func openInstalled(store: ModelStore, verifier: VersionVerifier,
                              bundledVersion: URL) async throws -> DevicetuneModel {
        if let version = store.currentVersion() {
            let folder = store.folder(version: version)
            if let manifest = try? verifier.verifyFolder(folder, expectedVersion: version),
               let model = try? DevicetuneModel(version: folder, manifest: manifest, store: store) {
                return model
            }
            // Damaged: fall back to the shipped version; the next update repairs it.
        }
        let staging = try store.newStaging()
        defer { try? FileManager.default.removeItem(at: staging) }
        for file in [VersionFiles.manifestFile, VersionFiles.signatureFile, VersionFiles.modelFile] {
            try FileManager.default.copyItem(at: bundledVersion.appendingPathComponent(file),
                                             to: staging.appendingPathComponent(file))
        }
        let manifest = try verifier.verifyFolder(staging)
        try await store.compile(in: staging, manifest: manifest)
        let folder = try store.commit(staging: staging, version: manifest.version)
        let model = try DevicetuneModel(version: folder, manifest: manifest, store: store)
        try store.makeCurrent(version: manifest.version)
        return model
    }
}
