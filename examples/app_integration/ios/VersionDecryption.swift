import CryptoKit
import Foundation

// Decrypts a verified encrypted version (emit.encrypt_for), scheme
// ecies-p256-hkdf-sha256-aes256gcm/v1 of src/devicetune/artifacts/encryption.py, as
// VersionDecryption.kt does (that one is compiled and run on a version devicetune
// encrypted; this one is checked by contract only: no Swift compiler here).
//   Z   = ECDH(the app's private key, E)
//   KEK = HKDF-SHA256(Z, salt = E || R, info = "devicetune/v1 key wrap", 32 bytes)
//   K   = AES.GCM.open(wrapped, KEK, AAD = "devicetune/v1 data key")
//   NAME = AES.GCM.open(NAME.enc, K, AAD = NAME), its sha256 = the manifest's
// E and R (the app's public key) as 65-byte X9.63 points. The private key can be a
// Secure Enclave P-256 key-agreement key: it never leaves the enclave.
struct DecryptionError: LocalizedError, Sendable {
    let message: String
    var errorDescription: String? { message }
}

/// `@unchecked Sendable`: it holds an immutable key and a closure over it only.
struct VersionDecryption: @unchecked Sendable {
    static let scheme = "ecies-p256-hkdf-sha256-aes256gcm/v1"
    static let encryptedSuffix = ".enc"

    let publicKey: P256.KeyAgreement.PublicKey
    let agree: (P256.KeyAgreement.PublicKey) throws -> SharedSecret

    init(privateKey: P256.KeyAgreement.PrivateKey) {
        publicKey = privateKey.publicKey
        agree = { try privateKey.sharedSecretFromKeyAgreement(with: $0) }
    }

    init(secureEnclaveKey: SecureEnclave.P256.KeyAgreement.PrivateKey) {
        publicKey = secureEnclaveKey.publicKey
        agree = { try secureEnclaveKey.sharedSecretFromKeyAgreement(with: $0) }
    }

    /// Hex sha256 of the DER public key: how manifest.json names this recipient.
    var keyID: String { SHA256.hash(data: publicKey.derRepresentation).map { String(format: "%02x", $0) }.joined() }

    /// File name -> plaintext of every payload file, each checked against the manifest.
    func decrypt(manifest: Data, read: (String) throws -> Data) throws -> [String: Data] {
        guard let json = try JSONSerialization.jsonObject(with: manifest) as? [String: Any],
              let encryption = json["encryption"] as? [String: Any] else {
            throw DecryptionError(message: "the version is not encrypted: use its files as they are")
        }
        guard encryption["scheme"] as? String == Self.scheme else {
            throw DecryptionError(message: "unknown encryption scheme; this app reads \(Self.scheme)")
        }
        guard let recipients = encryption["recipients"] as? [[String: Any]],
              let entry = recipients.first(where: { $0["recipient"] as? String == keyID }),
              let point = Data(base64Encoded: entry["ephemeral_public_key"] as? String ?? ""),
              let wrapped = Data(base64Encoded: entry["wrapped_key"] as? String ?? "") else {
            throw DecryptionError(message: "the version is not encrypted for this app's key")
        }
        let ephemeral = try P256.KeyAgreement.PublicKey(x963Representation: point)
        let kek = try agree(ephemeral).hkdfDerivedSymmetricKey(
            using: SHA256.self, salt: point + publicKey.x963Representation,
            sharedInfo: Data("devicetune/v1 key wrap".utf8), outputByteCount: 32)
        let dataKey: SymmetricKey
        do {
            dataKey = SymmetricKey(data: try AES.GCM.open(AES.GCM.SealedBox(combined: wrapped), using: kek,
                                                          authenticating: Data("devicetune/v1 data key".utf8)))
        } catch {
            throw DecryptionError(message: "the wrapped data key does not open with this key")
        }
        guard let files = encryption["files"] as? [String: [String: Any]] else {
            throw DecryptionError(message: "manifest.json has no encryption files")
        }
        var out: [String: Data] = [:]
        for (name, file) in files {
            guard let stored = file["file"] as? String, let sha256 = file["sha256"] as? String else {
                throw DecryptionError(message: "\(name): no encrypted file entry")
            }
            let plaintext: Data
            do {
                plaintext = try AES.GCM.open(AES.GCM.SealedBox(combined: try read(stored)), using: dataKey,
                                             authenticating: Data(name.utf8))
            } catch {
                throw DecryptionError(message: "\(name): decryption failed: altered, renamed, or of another version")
            }
            guard SHA256.hash(data: plaintext).map({ String(format: "%02x", $0) }).joined() == sha256 else {
                throw DecryptionError(message: "\(name): its plaintext's sha256 differs from the manifest")
            }
            out[name] = plaintext
        }
        return out
    }
}
