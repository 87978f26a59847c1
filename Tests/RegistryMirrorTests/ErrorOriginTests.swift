import ContentStore
import Foundation
import MetadataIndex
import Mirror
import Testing
@testable import Upstream
@testable import RegistryAPI

/// Errors carry where they were raised and what they wrapped, for the log; the client gets
/// only the message.
@Suite struct ErrorOriginTests {
    @Test func theCauseChainReachesTheLogButNotTheWire() throws {
        let sqlite = SQLiteFailure(code: 13, message: "database or disk is full", statement: "INSERT INTO blobs")
        let index = IndexError(.io, "recording a batch", cause: sqlite)
        let store = StoreError(.io, "rename failed", cause: index)
        let mirror = MirrorError(.storeFailed, "the local store failed while caching a blob", cause: store)

        let chain = mirror.debugDescription
        #expect(chain.hasPrefix("local store failure: the local store failed while caching a blob"), "\(chain)")
        // Each layer names its own file and line, innermost last.
        #expect(chain.contains("at RegistryMirrorTests/ErrorOriginTests.swift:"), "\(chain)")
        #expect(chain.contains("caused by i/o error: rename failed"), "\(chain)")
        #expect(chain.contains("SQLite code 13"), "\(chain)")
        #expect(chain.range(of: "caused by")!.lowerBound < chain.range(of: "SQLite code 13")!.lowerBound)

        let response = RegistryError(mirror)
        #expect(response.cause == chain)
        let wire = String(buffer: RegistryError.envelope(code: response.code.name, message: response.code.message, detail: response.detail))
        #expect(!wire.contains("SQLite") && !wire.contains(".swift"), "the envelope carries the cause: \(wire)")
    }

    @Test func aTransportFailureNamesCurlsCode() {
        var transport = TransportError(kind: .timeout, message: "no response head within 15 seconds")
        transport.curlCode = 28
        let upstream = UpstreamError(.unavailable, "docker.io did not answer", cause: transport)
        #expect(upstream.debugDescription.contains("caused by no response head within 15 seconds (curl error 28)"), "\(upstream.debugDescription)")
        #expect(!upstream.description.contains("curl error"), "the message itself stays the client's: \(upstream.description)")
    }
}
