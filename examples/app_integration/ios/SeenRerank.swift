import Foundation

// The personalization recipe the simulator measures (fleet.personalization.method =
// "seen_rerank", src/devicetune/fleet/personalize_seen.py), as SeenRerank.kt has it (that
// one is compiled and compared with the simulator's numpy; this one by contract only): the
// personal model only re-ranks among the classes the device has seen, and only where the
// global top class is one of them; every unseen class keeps its global probability.
// The app predicts with the global model and with its personal one (`DevicetuneModel`
// `predict` before and after `personalize`) and combines the two probability vectors.
enum SeenRerank {
    static let autoSlope = 0.5

    /// The personal output's weight for blend = "global_error": one half where the global
    /// model is right on the device's whole past, growing to 1 as it fails there.
    static func blendFromError(_ error: Double) -> Double { min(1.0, 0.5 + autoSlope * error) }

    static func combine(global: [Double], personal: [Double], seen: [Int], blend: Double) -> [Double] {
        guard blend != 0, !seen.isEmpty, let top = global.indices.max(by: { global[$0] < global[$1] }),
              seen.contains(top) else { return global }
        var out = global
        let mass = seen.reduce(0) { $0 + global[$1] }
        let personalMass = seen.reduce(0) { $0 + personal[$1] }
        for c in seen {
            out[c] = mass * ((1 - blend) * global[c] / max(mass, 1e-30)
                             + blend * personal[c] / max(personalMass, 1e-30))
        }
        return out
    }

    /// The global top class where it is unseen, else the best seen class of `combine`.
    static func predict(global: [Double], personal: [Double], seen: [Int], blend: Double) -> Int {
        let top = global.indices.max(by: { global[$0] < global[$1] }) ?? 0
        guard blend != 0, seen.contains(top) else { return top }
        let combined = combine(global: global, personal: personal, seen: seen, blend: blend)
        return seen.max(by: { combined[$0] < combined[$1] }) ?? top
    }
}
