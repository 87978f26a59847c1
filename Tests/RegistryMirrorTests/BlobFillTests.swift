import ContentStore
import Foundation
@testable import Mirror
import OCI
import Testing

@Suite struct BlobFillTests {
    let digest = DigestHasher.digest(of: Array("x".utf8))

    func makeFill(expectedSize: Int64? = nil) -> BlobFill {
        BlobFill(digest: digest, file: ReadableFile(descriptor: open("/dev/null", O_RDONLY), size: 0), expectedSize: expectedSize)
    }

    @Test func lastByteIsHeldBackUntilVerified() async throws {
        let fill = makeFill()
        fill.started(contentLength: 10)
        fill.advanced(to: 4)
        #expect(try await fill.available(beyond: 0).sendable == 4)
        fill.advanced(to: 10)
        #expect(try await fill.available(beyond: 4).sendable == 9, "all bytes written, but not yet verified")
        async let waiting = fill.available(beyond: 9)
        try await Task.sleep(for: .milliseconds(50))
        fill.finished(.done)
        let (sendable, complete) = try await waiting
        #expect(sendable == 10)
        #expect(complete)
    }

    @Test func verificationReleasesTheLastByteBeforePublishing() async throws {
        let fill = makeFill()
        fill.started(contentLength: 10)
        fill.advanced(to: 10)
        async let waiting = fill.available(beyond: 9)
        try await Task.sleep(for: .milliseconds(50))
        fill.verified()
        let (sendable, complete) = try await waiting
        #expect(sendable == 10, "verified bytes may all be sent while fsync and rename run")
        #expect(complete)
        #expect(fill.snapshot.outcome.isRunning)
    }

    @Test func failureWakesEveryReaderWithTheError() async throws {
        let fill = makeFill()
        fill.started(contentLength: 100)
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
        let fill = makeFill()
        async let size = fill.size()
        try await Task.sleep(for: .milliseconds(20))
        fill.started(contentLength: 42)
        #expect(try await size == 42)
    }

    /// A chunked upstream sends no length: the size a cached manifest names stands in.
    @Test func aDescriptorSizeStandsInForAMissingContentLength() async throws {
        let fill = makeFill(expectedSize: 7)
        fill.started(contentLength: nil)
        #expect(try await fill.size() == 7)
    }

    /// The hang of issue 10: a fill that ended with no size must answer, not loop.
    @Test func aSizelessFillThatEndsReportsWhatItWrote() async throws {
        let fill = makeFill()
        async let size = fill.size()
        try await Task.sleep(for: .milliseconds(20))
        fill.advanced(to: 5)
        fill.verified()
        fill.finished(.done)
        #expect(try await size == 5)
        #expect(try await fill.completedSize(within: .seconds(1)) == 5)
    }

    /// Unknown length: everything written may go, but the end (the last chunk) waits for
    /// verification, and then the reader learns there is no more.
    @Test func aSizelessBodyHoldsBackItsEndUntilVerified() async throws {
        let fill = makeFill()
        fill.started(contentLength: nil)
        #expect(try await fill.size() == nil)
        fill.advanced(to: 8)
        let first = try await fill.available(beyond: 0)
        #expect(first.sendable == 8 && !first.complete)
        async let end = fill.available(beyond: 8)
        try await Task.sleep(for: .milliseconds(20))
        fill.verified()
        let last = try await end
        #expect(last.sendable == 8 && last.complete)
    }

    @Test func completedSizeGivesUpAfterItsLimit() async throws {
        let fill = makeFill()
        fill.started(contentLength: nil)
        let clock = ContinuousClock()
        let started = clock.now
        #expect(try await fill.completedSize(within: .milliseconds(100)) == nil)
        #expect(started.duration(to: clock.now) < .seconds(5))
    }
}
