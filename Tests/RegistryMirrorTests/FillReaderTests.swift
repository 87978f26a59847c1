import ContentStore
import Foundation
import Logging
@testable import Mirror
import OCI
import Synchronization
import Testing

/// A reader of a growing fill looks like a stored blob's reader: it waits for bytes, tells
/// no size until the upstream did (none for a chunked body), holds back the last byte until
/// the digest is verified, and throws the fill's failure.
@Suite struct FillReaderTests {
    let bytes = (0..<200_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }

    /// A fill spooling into a real file, and that file's writer side.
    func makeFill(_ dir: TemporaryDirectory) throws -> (BlobFill, FileHandle) {
        let path = dir.path + "/spool"
        _ = FileManager.default.createFile(atPath: path, contents: nil)
        let file = ReadableFile(descriptor: open(path, O_RDONLY), size: 0)
        return (BlobFill(digest: DigestHasher.digest(of: bytes), file: file), try FileHandle(forWritingTo: URL(fileURLWithPath: path)))
    }

    @Test func readsAsBytesArriveAndHoldsBackTheEndUntilVerified() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let (fill, spool) = try makeFill(dir)
        let reader = fill.reader()
        async let size = reader.size()
        fill.started(contentLength: Int64(bytes.count))
        #expect(try await size == Int64(bytes.count))
        let collected = Task { () throws -> [UInt8] in
            var out: [UInt8] = []
            for try await chunk in reader.chunks(from: 0, length: nil) { out += chunk }
            return out
        }
        try spool.write(contentsOf: bytes[0..<100_000])
        fill.advanced(to: 100_000)
        try spool.write(contentsOf: bytes[100_000...])
        fill.advanced(to: Int64(bytes.count))
        #expect(try await reader.fileRegions?.available(beyond: 100_000) == Int64(bytes.count) - 1, "the last byte went out before verification")
        fill.verified()
        #expect(try await collected.value == bytes)
        #expect(try await reader.fileRegions?.available(beyond: 0) == Int64(bytes.count))
    }

    @Test func aChunkedBodyHasNoSizeUntilItEnds() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let (fill, spool) = try makeFill(dir)
        let reader = fill.reader()
        fill.started(contentLength: nil)
        #expect(try await reader.size() == nil)
        try spool.write(contentsOf: bytes)
        fill.advanced(to: Int64(bytes.count))
        fill.finished(.done)
        #expect(try await reader.size() == Int64(bytes.count))
        var out: [UInt8] = []
        for try await chunk in reader.chunks(from: 1000, length: nil) { out += chunk }
        #expect(out == Array(bytes[1000...]))
    }

    @Test func aFailedFillMakesItsReadersThrow() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let (fill, spool) = try makeFill(dir)
        let reader = fill.reader()
        fill.started(contentLength: Int64(bytes.count))
        try spool.write(contentsOf: bytes[0..<5000])
        fill.advanced(to: 5000)
        let reading = Task { () -> (bytes: Int, error: (any Error)?) in
            var count = 0
            do {
                for try await chunk in reader.chunks(from: 0, length: Int64(bytes.count)) { count += chunk.count }
                return (count, nil)
            } catch {
                return (count, error)
            }
        }
        fill.finished(.failed(MirrorError(.invalidContent, "digest mismatch")))
        let (count, error) = await reading.value
        #expect((error as? MirrorError)?.code == .invalidContent, "a reader of a failed fill ended without its error")
        #expect(count <= 5000)
    }

    @Test func readersAreCountedWhileTheyLive() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let (fill, _) = try makeFill(dir)
        do {
            let reader = fill.reader()
            #expect(fill.state.withLock { $0.readers } == 1)
            withExtendedLifetime(reader) {}
        }
        #expect(fill.state.withLock { $0.readers } == 0)
        await fill.unread()  // returns at once: nobody reads it
    }
}

/// The fill service drains on shutdown: no new jobs, those nobody waits for cancelled at
/// once, the rest at the end of the grace.
@Suite struct FillServiceTests {
    /// When each job ended.
    final class Ends: Sendable {
        private let ends = Mutex<[String: ContinuousClock.Instant]>([:])
        func add(_ name: String) { ends.withLock { $0[name] = .now } }
        subscript(_ name: String) -> ContinuousClock.Instant? { ends.withLock { $0[name] } }
    }

    /// Parks until its task is cancelled (the sleep is never meant to run out).
    static func parkUntilCancelled() async { try? await Task.sleep(for: .seconds(3600)) }

    @Test func shutdownCancelsUnwantedJobsAtOnceAndTheRestAfterTheGrace() async throws {
        let service = FillService(logger: Logger(label: "test"))
        let ends = Ends()
        let running = Task { await service.run(grace: .seconds(1)) }
        while !service.isRunning { await Task.yield() }
        #expect(service.start(.fill, unwanted: {}) {
            await Self.parkUntilCancelled()
            ends.add("unread")
        })
        #expect(service.start(.fill, unwanted: { await Self.parkUntilCancelled() }) {
            await Self.parkUntilCancelled()
            ends.add("read")
        })
        let clock = ContinuousClock()
        let shutdown = clock.now
        service.shutDown()
        #expect(!service.start(.prefetch) {}, "a job was taken while draining")
        #expect(!service.start(.fill) {}, "a job was taken while draining")
        await running.value
        let took = clock.now - shutdown
        let unread = try #require(ends["unread"]) - shutdown
        let read = try #require(ends["read"]) - shutdown
        #expect(unread < .milliseconds(500), "a download nobody reads was cancelled \(unread) after the shutdown, not at once")
        #expect(read >= .milliseconds(900), "a download a client reads was cancelled \(read) after the shutdown, before the 1 s grace")
        #expect(took < .seconds(5), "the drain took \(took); the grace is 1 s")
    }

    /// A fill's commit and record (`FillService.finishing`) run to their end although the
    /// drain cancels the job (nobody reads it), and the service returns only after them.
    @Test func finishingWorkOutlivesTheDrainsCancellation() async throws {
        let service = FillService(logger: Logger(label: "test"))
        let ends = Ends()
        let running = Task { await service.run(grace: .milliseconds(100)) }
        while !service.isRunning { await Task.yield() }
        let (entered, enter) = AsyncStream.makeStream(of: Void.self)
        #expect(service.start(.fill, unwanted: {}) {
            try? await FillService.finishing {
                enter.yield()
                try await Task.sleep(for: .milliseconds(500))  // throws if cancelled
                ends.add("finishing")
            }
            ends.add("job")
        })
        var waiting = entered.makeAsyncIterator()
        await waiting.next()
        service.shutDown()
        await running.value
        let finishing = try #require(ends["finishing"], "the finishing work was cancelled by the drain")
        let job = try #require(ends["job"])
        #expect(job >= finishing, "the job ended before its finishing work")
    }
}
