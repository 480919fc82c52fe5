import BackgroundTasks
import CryptoKit
import Foundation
import Security

// devicetune's device protocol v1 (docs/gateway-openapi.json) on iOS, step for step as the
// reference phone (examples/reference_phone/phone.py) and FederationClient.kt speak it:
//   enroll once -> check in -> (no task: come back after retry_after_s)
//   -> download the model (sha256 checked) -> download the start weights (safetensors)
//   -> train through a TrainingAdapter -> report the weights (safetensors) -> check in ...
// A report whose answer was lost is sent again with the same body: the server counts an
// accepted report once ("duplicate": true) and answers 404/410 when its round is gone.
//
// No Swift compiler runs on the machine devicetune is tested on: this file is checked by
// contract (tests/examples/test_federation_contract.py: every route and field against the
// served OpenAPI document, the order of the protocol steps against the Kotlin client's).

struct ProtocolError: LocalizedError, Sendable {
    let status: Int
    let message: String
    var errorDescription: String? { message }
}

struct Instructions: Sendable {
    let localEpochs: Int
    let learningRate: Double
    let proximalMu: Double
    let dpSgd: Bool
}

struct FederationTask: Sendable {
    let taskID: String
    let round: Int
    let weightsURL: String
    let modelURL: String
    let modelSHA256: String
    let instructions: Instructions
}

struct Eligibility: Sendable {
    let charging: Bool
    let unmetered: Bool
    let idle: Bool
}

/// What training produced: the new weights (name -> shape, values) and the metadata.
struct TrainResult {
    let weights: [String: (shape: [Int], values: [Float])]
    let numExamples: Int
    let trainLoss: Double
    var dpSteps: Int? = nil
}

/// How the app trains: `CoreMLTrainingAdapter` (below) runs `MLUpdateTask`.
protocol TrainingAdapter {
    func load(model: Data, sha256: String) throws
    func train(start: [String: (shape: [Int], values: [Float])],
               instructions: Instructions) async throws -> TrainResult
}

/// The credential in the Keychain, readable only on this device after the first unlock (a
/// background task runs while the phone is locked), never in a backup.
struct KeychainCredentials {
    let service = "devicetune.federation"

    func load() -> (deviceID: Int, credential: String)? {
        let query: [CFString: Any] = [kSecClass: kSecClassGenericPassword,
                                      kSecAttrService: service, kSecReturnData: true,
                                      kSecReturnAttributes: true]
        var item: CFTypeRef?
        guard SecItemCopyMatching(query as CFDictionary, &item) == errSecSuccess,
              let found = item as? [CFString: Any], let data = found[kSecValueData] as? Data,
              let account = found[kSecAttrAccount] as? String, let id = Int(account)
        else { return nil }
        return (id, String(decoding: data, as: UTF8.self))
    }

    func save(deviceID: Int, credential: String) throws {
        SecItemDelete([kSecClass: kSecClassGenericPassword, kSecAttrService: service]
                      as CFDictionary)
        let status = SecItemAdd([kSecClass: kSecClassGenericPassword, kSecAttrService: service,
                                 kSecAttrAccount: String(deviceID),
                                 kSecAttrAccessible: kSecAttrAccessibleAfterFirstUnlockThisDeviceOnly,
                                 kSecValueData: Data(credential.utf8)] as CFDictionary, nil)
        guard status == errSecSuccess else {
            throw ProtocolError(status: 0, message: "Keychain: SecItemAdd failed (\(status))")
        }
    }
}

enum ReportOutcome {
    case accepted(duplicate: Bool)
    case roundGone(status: Int) // 404 or 410: check in again
}

final class FederationClient {
    let baseURL: URL
    let credentials: KeychainCredentials
    let platform = "ios"
    var session: URLSession = .shared
    var modelVersion: Int?

    init(baseURL: URL, credentials: KeychainCredentials = KeychainCredentials()) {
        self.baseURL = baseURL
        self.credentials = credentials
    }

    func enroll(enrollmentToken: String) async throws {
        if credentials.load() != nil { return } // once per install
        let answer = try await json(request("POST", "/v1/enroll", body: try JSONSerialization
            .data(withJSONObject: ["enrollment_token": enrollmentToken, "platform": platform])))
        guard let id = try field(answer, "device_id") as? Int,
              let credential = try field(answer, "credential") as? String
        else { throw ProtocolError(status: 0, message: "enroll: unexpected answer") }
        try credentials.save(deviceID: id, credential: credential)
    }

    func checkIn(_ eligibility: Eligibility) async throws -> (task: FederationTask?, retryAfterS: Double) {
        let body: [String: Any] = ["platform": platform,
                                   "model_version": modelVersion as Any? ?? NSNull(),
                                   "charging": eligibility.charging,
                                   "unmetered": eligibility.unmetered, "idle": eligibility.idle]
        let answer = try await json(request("POST", "/v1/checkin",
                                            body: try JSONSerialization.data(withJSONObject: body)))
        let wait = (try field(answer, "retry_after_s") as? NSNumber)?.doubleValue ?? 60
        guard let task = try field(answer, "task") as? [String: Any] else { return (nil, wait) }
        return (try parseTask(task), wait)
    }

    func downloadModel(_ task: FederationTask) async throws -> Data {
        let data = try await request("GET", task.modelURL, body: nil)
        let digest = SHA256.hash(data: data).map { String(format: "%02x", $0) }.joined()
        guard digest == task.modelSHA256 else {
            throw ProtocolError(status: 0, message: "the model does not match the task's sha256")
        }
        return data
    }

    func downloadWeights(_ task: FederationTask) async throws -> [String: (shape: [Int], values: [Float])] {
        try Safetensors.decode(try await request("GET", task.weightsURL, body: nil)).tensors
    }

    func report(_ task: FederationTask, body: Data) async throws -> ReportOutcome {
        do {
            let answer = try await json(request("POST", "/v1/tasks/\(task.taskID)/report",
                                                body: body,
                                                contentType: "application/octet-stream"))
            return .accepted(duplicate: (try field(answer, "duplicate") as? Bool) ?? false)
        } catch let error as ProtocolError where error.status == 404 || error.status == 410 {
            return .roundGone(status: error.status)
        }
    }

    /// The same body again while the server cannot be reached or fails (5xx), with
    /// exponential backoff: idempotent, an accepted report counts once.
    func reportWithRetry(_ task: FederationTask, body: Data, attempts: Int = 4) async throws -> ReportOutcome {
        var wait: UInt64 = 500_000_000
        for attempt in 1...attempts {
            do {
                return try await report(task, body: body)
            } catch let error as ProtocolError where error.status >= 400 && error.status < 500 {
                throw error
            } catch {
                if attempt == attempts { throw error }
                try await Task.sleep(nanoseconds: wait)
                wait *= 2
            }
        }
        throw ProtocolError(status: 0, message: "unreachable")
    }

    func reportBody(_ result: TrainResult) -> Data {
        var metadata = ["num_examples": String(result.numExamples),
                        "train_loss": String(result.trainLoss)]
        if let steps = result.dpSteps { metadata["dp_steps"] = String(steps) }
        return Safetensors.encode(result.weights, metadata: metadata)
    }

    /// One cycle: check in; with a task, train and report. Returns the seconds to wait
    /// before the next check-in ("come back after"; 0 after a report).
    func runCycle(adapter: TrainingAdapter, eligibility: Eligibility) async throws -> Double {
        let answer = try await checkIn(eligibility)
        guard let task = answer.task else { return answer.retryAfterS }
        try adapter.load(model: try await downloadModel(task), sha256: task.modelSHA256)
        let start = try await downloadWeights(task)
        let result = try await adapter.train(start: start, instructions: task.instructions)
        _ = try await reportWithRetry(task, body: reportBody(result))
        return 0
    }

    // ------------------------------------------------------------------ HTTP

    private func request(_ method: String, _ path: String, body: Data?,
                         contentType: String = "application/json") async throws -> Data {
        guard let url = URL(string: path, relativeTo: baseURL) else {
            throw ProtocolError(status: 0, message: "bad path \(path)")
        }
        var request = URLRequest(url: url)
        request.httpMethod = method
        if let (_, credential) = credentials.load() {
            request.setValue("Bearer \(credential)", forHTTPHeaderField: "Authorization")
        }
        if let body {
            request.httpBody = body // URLSession sets Content-Length
            request.setValue(contentType, forHTTPHeaderField: "Content-Type")
        }
        let (data, response) = try await session.data(for: request)
        let status = (response as? HTTPURLResponse)?.statusCode ?? 0
        guard status < 400 else {
            throw ProtocolError(status: status, message: "\(method) \(path): HTTP \(status) "
                                + String(decoding: data.prefix(500), as: UTF8.self))
        }
        return data
    }

    private func json(_ data: Data) throws -> [String: Any] {
        guard let object = try JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw ProtocolError(status: 0, message: "the answer is not a JSON object")
        }
        return object
    }

    private func parseTask(_ task: [String: Any]) throws -> FederationTask {
        guard let i = try field(task, "instructions") as? [String: Any],
              let id = try field(task, "task_id") as? String,
              let round = try field(task, "round") as? Int,
              let weights = try field(task, "weights_url") as? String,
              let model = try field(task, "model_url") as? String,
              let sha256 = try field(task, "model_sha256") as? String,
              let epochs = try field(i, "local_epochs") as? Int,
              let rate = (try field(i, "learning_rate") as? NSNumber)?.doubleValue,
              let mu = (try field(i, "proximal_mu") as? NSNumber)?.doubleValue,
              let dp = try field(i, "dp_sgd") as? Bool
        else { throw ProtocolError(status: 0, message: "the task is not the expected JSON") }
        return FederationTask(taskID: id, round: round, weightsURL: weights, modelURL: model,
                              modelSHA256: sha256,
                              instructions: Instructions(localEpochs: epochs, learningRate: rate,
                                                         proximalMu: mu, dpSgd: dp))
    }
}

/// A field of a protocol answer (the contract test checks each name against the OpenAPI
/// document).
func field(_ object: [String: Any], _ name: String) throws -> Any? {
    guard let value = object[name] else {
        throw ProtocolError(status: 0, message: "the answer has no '\(name)'")
    }
    return value is NSNull ? nil : value
}

/// Safetensors (float32 only): 8-byte little-endian header length, JSON header, data.
enum Safetensors {
    static func decode(_ data: Data) throws -> (tensors: [String: (shape: [Int], values: [Float])],
                                                 metadata: [String: String]) {
        let bytes = [UInt8](data)
        guard bytes.count >= 8 else { throw ProtocolError(status: 0, message: "safetensors: short") }
        let length = bytes[0..<8].enumerated().reduce(0) { $0 | Int($1.element) << (8 * $1.offset) }
        guard length >= 2, length <= bytes.count - 8,
              let header = try JSONSerialization.jsonObject(
                  with: Data(bytes[8..<(8 + length)])) as? [String: Any]
        else { throw ProtocolError(status: 0, message: "safetensors: bad header") }
        var tensors: [String: (shape: [Int], values: [Float])] = [:]
        var metadata: [String: String] = [:]
        for (name, value) in header {
            if name == "__metadata__" { metadata = value as? [String: String] ?? [:]; continue }
            guard let entry = value as? [String: Any], entry["dtype"] as? String == "F32",
                  let shape = entry["shape"] as? [Int], let offsets = entry["data_offsets"] as? [Int],
                  8 + length + offsets[1] <= bytes.count
            else { throw ProtocolError(status: 0, message: "safetensors: \(name) is not F32") }
            let start = 8 + length + offsets[0]
            let values = stride(from: start, to: 8 + length + offsets[1], by: 4).map { at in
                Float(bitPattern: UInt32(bytes[at]) | UInt32(bytes[at + 1]) << 8
                      | UInt32(bytes[at + 2]) << 16 | UInt32(bytes[at + 3]) << 24)
            }
            tensors[name] = (shape, values)
        }
        return (tensors, metadata)
    }

    static func encode(_ tensors: [String: (shape: [Int], values: [Float])],
                       metadata: [String: String]) -> Data {
        var header: [String: Any] = ["__metadata__": metadata]
        var offset = 0
        for name in tensors.keys.sorted() {
            let count = tensors[name]!.values.count * 4
            header[name] = ["dtype": "F32", "shape": tensors[name]!.shape,
                            "data_offsets": [offset, offset + count]]
            offset += count
        }
        var json = (try? JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])) ?? Data()
        json.append(contentsOf: [UInt8](repeating: 0x20, count: (8 - json.count % 8) % 8))
        var out = Data()
        withUnsafeBytes(of: UInt64(json.count).littleEndian) { out.append(contentsOf: $0) }
        out.append(json)
        for name in tensors.keys.sorted() {
            for value in tensors[name]!.values {
                withUnsafeBytes(of: value.bitPattern.littleEndian) { out.append(contentsOf: $0) }
            }
        }
        return out
    }
}

/// Federated rounds in the background: a `BGProcessingTask` that needs external power and
/// network (the system runs it while the phone is idle, typically at night on Wi-Fi; iOS
/// has no "unmetered" constraint, so the check-in reports what `NWPathMonitor` says).
/// Register `identifier` under BGTaskSchedulerPermittedIdentifiers in Info.plist.
enum FederationSchedule {
    static let identifier = "com.example.devicetune.federation"

    static func register(client: FederationClient, adapter: TrainingAdapter,
                         eligibility: @escaping () -> Eligibility) {
        BGTaskScheduler.shared.register(forTaskWithIdentifier: identifier, using: nil) { task in
            let work = Task {
                do {
                    let wait = try await client.runCycle(adapter: adapter,
                                                         eligibility: eligibility())
                    schedule(after: wait) // "come back after"
                    task.setTaskCompleted(success: true)
                } catch {
                    schedule(after: 15 * 60) // the system's own backoff applies on top
                    task.setTaskCompleted(success: false)
                }
            }
            task.expirationHandler = { work.cancel() }
        }
    }

    static func schedule(after seconds: Double) {
        let request = BGProcessingTaskRequest(identifier: identifier)
        request.requiresExternalPower = true
        request.requiresNetworkConnectivity = true
        request.earliestBeginDate = Date(timeIntervalSinceNow: max(seconds, 60))
        try? BGTaskScheduler.shared.submit(request)
    }
}
