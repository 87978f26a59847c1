import Foundation
import OCI
import Testing
import Upstream

/// Being a better neighbour to the upstream: a plain 404 for a missing blob is not logged as a warning.
@Suite("registry-mirror and an unwell upstream", .serialized)
struct UpstreamHealthTests {
    static let manifestAccept = [("Accept", MediaType.manifestAccept.joined(separator: ", "))]

    static func timed<T>(_ body: () throws -> T) rethrows -> (T, Duration) {
        let clock = ContinuousClock()
        let started = clock.now
        let result = try body()
        return (result, clock.now - started)
    }

    @Test("a blob the upstream does not have: 404 BLOB_UNKNOWN, logged at debug, not as a warning")
    func missingBlobIsNoWarning() async throws {
        try await FaultEnvironment.with(layerSizes: [4096]) { env in
            let missing = Array("a blob nobody has \(UUID())".utf8).sha256
            let response = try await FaultRequest.get(port: env.port, path: FaultEnvironment.blobPath(missing))
            #expect(response.status == 404 && response.errorCodes == ["BLOB_UNKNOWN"], "\(response)\n\(env.diagnostics)")
            let lines = env.mirror.stderr.split(separator: "\n").filter { $0.contains("blob download failed") && $0.contains(missing.description) }
            #expect(lines.count == 1 && lines.allSatisfy { $0.contains(" debug ") }, "\(lines)\n\(env.diagnostics)")
            let warnings = env.mirror.stderr.split(separator: "\n").filter { $0.contains(" warning ") }
            #expect(warnings.isEmpty, "\(warnings)")

            // A real fault is still a warning.
            let layer = env.image.layers[0]
            env.upstream.setFault(.wrongBytes, for: layer.digest)
            _ = try await FaultRequest.get(port: env.port, path: FaultEnvironment.blobPath(layer.digest))
            let faults = env.mirror.stderr.split(separator: "\n").filter { $0.contains("blob download failed") && $0.contains(layer.digest.description) }
            #expect(faults.count == 1 && faults.allSatisfy { $0.contains(" warning ") }, "\(faults)\n\(env.diagnostics)")
        }
    }
}
