import CryptoKit
import Foundation

/// Verifies `model.sig`, the signature devicetune writes beside every model version.
///
/// `model.sig` is an OpenSSF model-signing v1.0 sigstore bundle made in key-pair mode
/// (`devicetune sign`, src/devicetune/artifacts/signing.py): a DSSE envelope whose payload is
/// an in-toto statement listing the sha256 of manifest.json and of every payload file,
/// signed with ECDSA P-256 / SHA-256 (DER signature, base64) over the DSSE pre-authentication
/// encoding of the payload. The payload is decoded only after that signature verifies with
/// the release public key the app ships.
struct SignatureVerifier: Sendable {
    static let bundleMediaTypePrefix = "application/vnd.dev.sigstore.bundle"
    static let payloadType = "application/vnd.in-toto+json"
    static let statementType = "https://in-toto.io/Statement/v1"
    static let predicateType = "https://model_signing/signature/v1.0"

    private let publicKey: P256.Signing.PublicKey
    private let keyHint: String

    /// - Parameter publicKeyPEM: the release public key, `public_key.pem` of
    ///   `devicetune keys generate`. Ship it in the app; never download it.
    init(publicKeyPEM: String) throws {
        publicKey = try P256.Signing.PublicKey(pemRepresentation: publicKeyPEM)
        keyHint = SHA256.hash(data: Data(publicKeyPEM.utf8)).hex
    }

    /// Checks the bundle's signature and returns what it vouches for: file name -> hex sha256
    /// of manifest.json and every payload file of the version.
    func signedDigests(bundle data: Data) throws -> [String: String] {
        let bundle: SigstoreBundle
        do {
            bundle = try JSONDecoder().decode(SigstoreBundle.self, from: data)
        } catch {
            throw InvalidModelError("model.sig is not a model-signing bundle: \(error)")
        }
        guard bundle.mediaType.hasPrefix(Self.bundleMediaTypePrefix) else {
            throw InvalidModelError("model.sig is not a sigstore bundle")
        }
        let envelope = bundle.dsseEnvelope
        guard envelope.payloadType == Self.payloadType else {
            throw InvalidModelError(
                "model.sig signs a '\(envelope.payloadType)' payload, not an in-toto statement")
        }
        guard let payload = Data(base64Encoded: envelope.payload) else {
            throw InvalidModelError("model.sig's payload is not base64")
        }
        let message = Self.pae(payloadType: envelope.payloadType, payload: payload)
        let verified = envelope.signatures.contains { entry in
            guard let der = Data(base64Encoded: entry.sig),
                  let signature = try? P256.Signing.ECDSASignature(derRepresentation: der) else {
                return false
            }
            return publicKey.isValidSignature(signature, for: message) // SHA-256 of message
        }
        guard verified else {
            // The hint is unauthenticated: it only makes the error message precise.
            let hint = bundle.verificationMaterial?.publicKey?.hint ?? ""
            throw InvalidModelError(!hint.isEmpty && hint != keyHint
                ? "model.sig was made by another key than the app's release key"
                : "model.sig does not verify: the signature or the statement was altered")
        }
        let statement: InTotoStatement
        do {
            statement = try JSONDecoder().decode(InTotoStatement.self, from: payload)
        } catch {
            throw InvalidModelError("the signed statement is malformed: \(error)")
        }
        return try Self.digests(of: statement)
    }

    /// DSSE v1 pre-authentication encoding: `"DSSEv1" SP len(type) SP type SP len(body) SP body`,
    /// lengths in bytes as ASCII decimal (github.com/secure-systems-lab/dsse, protocol.md).
    static func pae(payloadType: String, payload: Data) -> Data {
        var message = Data("DSSEv1 \(payloadType.utf8.count) \(payloadType) \(payload.count) ".utf8)
        message.append(payload)
        return message
    }

    private static func digests(of statement: InTotoStatement) throws -> [String: String] {
        guard statement.type == statementType else {
            throw InvalidModelError("the signed payload is not an in-toto v1 statement")
        }
        guard statement.predicateType == predicateType else {
            throw InvalidModelError("the signed statement is not a model-signing v1.0 signature")
        }
        var digests: [String: String] = [:]
        var root = SHA256()
        for resource in statement.predicate.resources {
            guard resource.algorithm == "sha256", let bytes = Data(hex: resource.digest),
                  bytes.count == SHA256.byteCount else {
                throw InvalidModelError("the signed digest of \(resource.name) is not a sha256")
            }
            guard digests.updateValue(resource.digest, forKey: resource.name) == nil else {
                throw InvalidModelError("the signed statement lists \(resource.name) twice")
            }
            root.update(data: bytes)
        }
        // model-signing checks the same: the subject names all resources by one digest.
        guard statement.subject.count == 1,
              statement.subject[0].digest["sha256"] == root.finalize().hex else {
            throw InvalidModelError("the signed statement's subject digest does not match its resources")
        }
        return digests
    }
}

/// Decides whether a version folder may be used: `SignatureVerifier` for the signature, then
/// every file the app keeps against the signed digests and the signed manifest. The app never
/// downloads the other payload files (model.tflite, update.npz), so each file is checked alone.
struct VersionVerifier: Sendable {
    let signatures: SignatureVerifier
    /// The model this app runs: a version of another model signed with the same key is refused.
    let modelName: String

    /// Verifies model.sig and manifest.json of `folder`, before the model file is there.
    func verifyManifest(in folder: URL, expectedVersion: Int? = nil) throws -> ModelManifest {
        let signed = try signatures.signedDigests(
            bundle: readSmallFile(folder.appendingPathComponent(VersionFiles.signatureFile)))
        let manifestData = try readSmallFile(folder.appendingPathComponent(VersionFiles.manifestFile))
        guard SHA256.hash(data: manifestData).hex == signed[VersionFiles.manifestFile] else {
            throw InvalidModelError("manifest.json was modified after signing")
        }
        let manifest = try ModelManifest.parse(manifestData)
        // As `devicetune verify`: the signature covers exactly the manifest and its files.
        guard Set(signed.keys) == Set(manifest.files.keys).union([VersionFiles.manifestFile]),
              manifest.files.allSatisfy({ signed[$0.key] == $0.value }) else {
            throw InvalidModelError("the signature and manifest.json disagree on the files")
        }
        guard manifest.name == modelName else {
            throw InvalidModelError("this is a version of '\(manifest.name)', not '\(modelName)'")
        }
        if let expectedVersion, manifest.version != expectedVersion {
            throw InvalidModelError("asked for version \(expectedVersion), the signed manifest "
                + "says \(manifest.version)")
        }
        let coreml = try manifest.requireCoreML()
        if manifest.encrypted {
            // Signed as encrypted: the signature covers the .enc file; its plaintext is
            // checked against coreml.sha256 after decryption (ModelUpdater).
            guard manifest.files[coreml.file + VersionDecryption.encryptedSuffix] != nil else {
                throw InvalidModelError("encrypted version \(manifest.version) lacks "
                    + coreml.file + VersionDecryption.encryptedSuffix)
            }
        } else if manifest.files[coreml.file] != coreml.sha256 {
            throw InvalidModelError("manifest.json's coreml.sha256 disagrees with its files")
        }
        return manifest
    }

    /// Verifies a whole version folder: `verifyManifest`, then the Core ML model's bytes.
    func verifyFolder(_ folder: URL, expectedVersion: Int? = nil) throws -> ModelManifest {
        let manifest = try verifyManifest(in: folder, expectedVersion: expectedVersion)
        let coreml = try manifest.requireCoreML()
        if manifest.encrypted {
            let encrypted = coreml.file + VersionDecryption.encryptedSuffix
            guard try sha256(ofFileAt: folder.appendingPathComponent(encrypted)) == manifest.files[encrypted] else {
                throw InvalidModelError("\(encrypted) does not match its signed sha256")
            }
        }
        guard try sha256(ofFileAt: folder.appendingPathComponent(coreml.file)) == coreml.sha256 else {
            throw InvalidModelError("\(coreml.file) does not match its signed sha256")
        }
        return manifest
    }

    private func readSmallFile(_ url: URL) throws -> Data {
        guard let size = try? url.resourceValues(forKeys: [.fileSizeKey]).fileSize else {
            throw InvalidModelError("\(url.lastPathComponent) is missing")
        }
        guard size <= 4 << 20 else { throw InvalidModelError("\(url.lastPathComponent) is too large") }
        return try Data(contentsOf: url)
    }
}

/// Hex sha256 of a file, read in chunks.
func sha256(ofFileAt url: URL) throws -> String {
    let handle: FileHandle
    do {
        handle = try FileHandle(forReadingFrom: url)
    } catch {
        throw InvalidModelError("\(url.lastPathComponent) is missing")
    }
    defer { try? handle.close() }
    var hasher = SHA256()
    while let chunk = try handle.read(upToCount: 1 << 20), !chunk.isEmpty {
        hasher.update(data: chunk)
    }
    return hasher.finalize().hex
}

// MARK: - The JSON of model.sig (explicit CodingKeys: the test reads them)

struct SigstoreBundle: Decodable {
    let mediaType: String
    let verificationMaterial: VerificationMaterial?
    let dsseEnvelope: Envelope

    enum CodingKeys: String, CodingKey {
        case mediaType, verificationMaterial, dsseEnvelope
    }

    struct VerificationMaterial: Decodable {
        let publicKey: KeyHint?
        enum CodingKeys: String, CodingKey { case publicKey }
    }

    struct KeyHint: Decodable {
        let hint: String?
        enum CodingKeys: String, CodingKey { case hint }
    }

    struct Envelope: Decodable {
        let payload: String
        let payloadType: String
        let signatures: [EnvelopeSignature]
        enum CodingKeys: String, CodingKey { case payload, payloadType, signatures }
    }

    struct EnvelopeSignature: Decodable {
        let sig: String
        enum CodingKeys: String, CodingKey { case sig }
    }
}

struct InTotoStatement: Decodable {
    let type: String
    let subject: [Subject]
    let predicateType: String
    let predicate: Predicate

    enum CodingKeys: String, CodingKey {
        case type = "_type"
        case subject, predicateType, predicate
    }

    struct Subject: Decodable {
        let digest: [String: String]
        enum CodingKeys: String, CodingKey { case digest }
    }

    struct Predicate: Decodable {
        let resources: [Resource]
        enum CodingKeys: String, CodingKey { case resources }
    }

    struct Resource: Decodable {
        let name: String
        let algorithm: String
        let digest: String
        enum CodingKeys: String, CodingKey { case name, algorithm, digest }
    }
}

extension Sequence where Element == UInt8 {
    var hex: String { map { String(format: "%02x", $0) }.joined() }
}

extension Data {
    /// Bytes of a lowercase hex string, or nil.
    init?(hex: String) {
        guard hex.count.isMultiple(of: 2) else { return nil }
        var bytes = [UInt8]()
        bytes.reserveCapacity(hex.count / 2)
        var index = hex.startIndex
        while index < hex.endIndex {
            let next = hex.index(index, offsetBy: 2)
            guard let byte = UInt8(hex[index..<next], radix: 16) else { return nil }
            bytes.append(byte)
            index = next
        }
        self.init(bytes)
    }
}
