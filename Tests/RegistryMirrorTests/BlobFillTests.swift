import Foundation
@testable import Mirror
import OCI
import Testing

@Suite struct BlobFillTests {
    let digest = DigestHasher.digest(of: Array("x".utf8))

    @Test func lastByteIsHeldBackUntilVerified() async throws {
        let fill = BlobFill(digest: digest, temporaryPath: "/nonexistent")
        fill.started(size: 10)
        fill.advanced(to: 4)
        #expect(try await fill.available(beyond: 0).written == 4)
        fill.advanced(to: 10)
        #expect(try await fill.available(beyond: 4).written == 9, "all bytes written, but not yet verified")
        async let waiting = fill.available(beyond: 9)
        try await Task.sleep(for: .milliseconds(50))
        fill.finished(.done(path: "/published"))
        let (written, outcome) = try await waiting
        #expect(written == 10)
        if case .done(let path) = outcome { #expect(path == "/published") } else { Issue.record("expected done") }
    }

    @Test func verificationReleasesTheLastByteBeforePublishing() async throws {
        let fill = BlobFill(digest: digest, temporaryPath: "/nonexistent")
        fill.started(size: 10)
        fill.advanced(to: 10)
        async let waiting = fill.available(beyond: 9)
        try await Task.sleep(for: .milliseconds(50))
        fill.verified()
        let (written, outcome) = try await waiting
        #expect(written == 10, "verified bytes may all be sent while fsync and rename run")
        #expect(outcome.isRunning)
    }

    @Test func failureWakesEveryReaderWithTheError() async throws {
        let fill = BlobFill(digest: digest, temporaryPath: "/nonexistent")
        fill.started(size: 100)
        fill.advanced(to: 100)
        let readers = (0..<2).map { _ in
            Task { () -> MirrorError? in
                do throws(MirrorError) {
                    _ = try await fill.available(beyond: 99)
                    return nil
                } catch {
                    return error
                }
            }
        }
        try await Task.sleep(for: .milliseconds(50))
        fill.finished(.failed(MirrorError(.invalidContent, "digest mismatch")))
        for reader in readers {
            let error = await reader.value
            #expect(error?.code == .invalidContent, "every reader gets the fill's error, none gets the last byte")
        }
        await #expect(throws: MirrorError.self) { try await fill.size() }
    }

    @Test func sizeWaitsForTheUpstreamHead() async throws {
        let fill = BlobFill(digest: digest, temporaryPath: "/nonexistent")
        async let size = fill.size()
        try await Task.sleep(for: .milliseconds(20))
        fill.started(size: 42)
        #expect(try await size == 42)
    }
}
