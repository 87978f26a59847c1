import ContentStore
import Foundation
import OCI
import Testing

/// The rules every `BlobStore` keeps, checked against any implementation: the file-system
/// store now, an S3-compatible one later (distribution's storage-driver test suite is the model).
///
/// `makeStore` returns a new, empty store on each call. Nothing here knows files or paths; what
/// only a file-system store can show (its temp files, the sweep of a dead process's) is tested
/// beside it (`FileSystemStoreTests`).
struct BlobStoreConformance {
    /// Whether a reader opened before a `delete` still reads the whole blob. True for files
    /// (an open descriptor outlives the unlink); false for an object store, where a deleted
    /// object is gone for everyone and the reader must then fail cleanly: throw or end short,
    /// never yield wrong bytes. (The mirror keeps eviction off blobs being read.)
    var readersOutliveDelete = true
    let makeStore: @Sendable () async throws -> any BlobStore

    /// Every check, each on a store of its own.
    func run() async throws {
        try await verifiedWriteBecomesVisibleOnlyAtCommit()
        try await wrongDigestIsRefusedAndInvisible()
        try await wrongSizeIsRefusedAndInvisible()
        try await abortedAndAbandonedWritesLeaveNothing()
        try await rangesReadExactBytes()
        try await anOpenedReaderOutlivesDelete()
        try await concurrentWritersOfOneDigest()
        try await deleteAndAllDigests()
        try await readIsBounded()
    }

    static func bytes(_ count: Int, seed: UInt8) -> [UInt8] {
        (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed) &+ ($0 >> 8)) }
    }

    /// Everything a reader yields from `offset`, `length` bytes (nil: to the end).
    static func collect(_ reader: any BlobReader, from offset: Int64 = 0, length: Int64? = nil) async throws -> [UInt8] {
        var out: [UInt8] = []
        for try await chunk in reader.chunks(from: offset, length: length) {
            #expect(!chunk.isEmpty && chunk.count <= BlobChunks.defaultSize, "a chunk of \(chunk.count) bytes")
            out += chunk
        }
        return out
    }

    func verifiedWriteBecomesVisibleOnlyAtCommit() async throws {
        let store = try await makeStore()
        let bytes = Self.bytes(100_000, seed: 1)
        let digest = DigestHasher.digest(of: bytes)
        let writer = try await store.makeWriter(expecting: digest, size: Int64(bytes.count))
        try bytes.withUnsafeBytes { try writer.write(UnsafeRawBufferPointer(rebasing: $0.prefix(40_000))) }
        try bytes.withUnsafeBytes { try writer.write(UnsafeRawBufferPointer(rebasing: $0.dropFirst(40_000))) }
        #expect(writer.bytesWritten == Int64(bytes.count))
        try await writer.verify()
        #expect(await store.size(of: digest) == nil, "a verified but uncommitted blob is visible")
        #expect(try await store.openBlob(digest) == nil)
        #expect(try await !store.allDigests().contains(digest))
        try await writer.commit()
        #expect(await store.size(of: digest) == Int64(bytes.count))
        #expect(try await store.read(digest, limit: 1 << 20) == bytes)
        let reader = try #require(try await store.openBlob(digest))
        #expect(try await reader.size() == Int64(bytes.count))
        #expect(try await Self.collect(reader) == bytes)
        #expect(try await store.allDigests() == [digest])
        #expect(await store.modificationDate(of: digest) != nil)
        writer.abort()  // after commit: harmless
        #expect(await store.size(of: digest) == Int64(bytes.count), "abort after commit removed the blob")
    }

    func wrongDigestIsRefusedAndInvisible() async throws {
        let store = try await makeStore()
        let digest = DigestHasher.digest(of: Array("expected".utf8))
        let writer = try await store.makeWriter(expecting: digest, size: 8)
        try Array("tampered".utf8).withUnsafeBytes { try writer.write($0) }
        await #expect(throws: StoreError.self) { try await writer.commit() }
        #expect(await store.size(of: digest) == nil)
        #expect(try await store.openBlob(digest) == nil)
        #expect(try await store.allDigests().isEmpty)
        await #expect(throws: StoreError.self) { _ = try await store.read(digest, limit: 100) }
    }

    func wrongSizeIsRefusedAndInvisible() async throws {
        let store = try await makeStore()
        let bytes = Array("0123456789".utf8)
        let digest = DigestHasher.digest(of: bytes)
        let short = try await store.makeWriter(expecting: digest, size: 10)
        try bytes.withUnsafeBytes { try short.write(UnsafeRawBufferPointer(rebasing: $0.prefix(9))) }
        await #expect(throws: StoreError.self) { try await short.commit() }
        // The right bytes, but a size that says otherwise: refused when written, or at the latest at commit.
        let long = try await store.makeWriter(expecting: digest, size: 9)
        await #expect(throws: StoreError.self) {
            try bytes.withUnsafeBytes { try long.write($0) }
            try await long.commit()
        }
        long.abort()
        #expect(await store.size(of: digest) == nil)
        #expect(try await store.allDigests().isEmpty)
    }

    func abortedAndAbandonedWritesLeaveNothing() async throws {
        let store = try await makeStore()
        let bytes = Self.bytes(10_000, seed: 2)
        let digest = DigestHasher.digest(of: bytes)
        let aborted = try await store.makeWriter(expecting: digest, size: Int64(bytes.count))
        try bytes.withUnsafeBytes { try aborted.write($0) }
        aborted.abort()
        aborted.abort()  // twice: harmless
        await #expect(throws: StoreError.self) { try await aborted.commit() }
        do {
            let abandoned = try await store.makeWriter(expecting: digest, size: Int64(bytes.count))
            try bytes.withUnsafeBytes { try abandoned.write(UnsafeRawBufferPointer(rebasing: $0.prefix(5000))) }
            // dropped without commit or abort, as when a download's task goes away
        }
        #expect(await store.size(of: digest) == nil)
        #expect(try await store.openBlob(digest) == nil)
        #expect(try await store.allDigests().isEmpty)
    }

    func rangesReadExactBytes() async throws {
        let store = try await makeStore()
        let bytes = Self.bytes(3 * BlobChunks.defaultSize + 123, seed: 3)
        let digest = DigestHasher.digest(of: bytes)
        try await store.write(bytes, as: digest)
        let reader = try #require(try await store.openBlob(digest))
        let size = Int64(bytes.count)
        #expect(try await Self.collect(reader) == bytes, "whole")
        #expect(try await Self.collect(reader, from: 0, length: 10) == Array(bytes[0..<10]), "start")
        #expect(try await Self.collect(reader, from: 70_000, length: 100_000) == Array(bytes[70_000..<170_000]), "middle, across chunks")
        #expect(try await Self.collect(reader, from: size - 10, length: 10) == Array(bytes[(bytes.count - 10)...]), "end")
        #expect(try await Self.collect(reader, from: size - 10) == Array(bytes[(bytes.count - 10)...]), "end, open-ended")
        #expect(try await Self.collect(reader, from: 500, length: 0).isEmpty, "empty")
        #expect(try await Self.collect(reader, from: size).isEmpty, "from the end")
        if let regions = reader.fileRegions {
            #expect(regions.file.size == size)
            #expect(try await regions.available(beyond: 0) == size, "a stored blob may be sent whole at once")
        }
    }

    func anOpenedReaderOutlivesDelete() async throws {
        let store = try await makeStore()
        let bytes = Self.bytes(200_000, seed: 4)
        let digest = DigestHasher.digest(of: bytes)
        try await store.write(bytes, as: digest)
        let reader = try #require(try await store.openBlob(digest))
        try await store.delete(digest)
        #expect(await store.size(of: digest) == nil)
        #expect(try await store.openBlob(digest) == nil, "a deleted blob can be opened")
        #expect(try await reader.size() == Int64(bytes.count))
        guard readersOutliveDelete else {
            var got: [UInt8] = []
            do {
                for try await chunk in reader.chunks(from: 0, length: nil) { got += chunk }
            } catch {}
            #expect(got.count < bytes.count, "a deleted object was read whole")
            #expect(got == Array(bytes.prefix(got.count)), "a reader of a deleted object yielded wrong bytes")
            return
        }
        #expect(try await Self.collect(reader) == bytes, "a reader opened before the delete lost bytes")
    }

    func concurrentWritersOfOneDigest() async throws {
        let store = try await makeStore()
        let bytes = Self.bytes(500_000, seed: 5)
        let digest = DigestHasher.digest(of: bytes)
        let first = try await store.makeWriter(expecting: digest, size: Int64(bytes.count))
        let second = try await store.makeWriter(expecting: digest, size: Int64(bytes.count))
        // Interleaved writes, then both commit at once: each succeeds, or one is refused
        // cleanly; either way the blob is whole.
        for start in stride(from: 0, to: bytes.count, by: 50_000) {
            for writer in [first, second] {
                try bytes.withUnsafeBytes { try writer.write(UnsafeRawBufferPointer(rebasing: $0[start..<min(start + 50_000, bytes.count)])) }
            }
        }
        let outcomes = await withTaskGroup(of: Bool.self) { group in
            for writer in [first, second] {
                group.addTask { (try? await writer.commit()) != nil }
            }
            return await group.reduce(into: [Bool]()) { $0.append($1) }
        }
        #expect(outcomes.contains(true), "neither of two writers of the right bytes succeeded")
        #expect(await store.size(of: digest) == Int64(bytes.count))
        #expect(try await store.read(digest, limit: 1 << 20) == bytes)
        #expect(try await store.allDigests() == [digest])
    }

    func deleteAndAllDigests() async throws {
        let store = try await makeStore()
        var digests: Set<Digest> = []
        for seed in UInt8(10)..<13 {
            let bytes = Self.bytes(1000 + Int(seed), seed: seed)
            let digest = DigestHasher.digest(of: bytes)
            try await store.write(bytes, as: digest)
            try await store.write(bytes, as: digest)  // again: idempotent
            digests.insert(digest)
        }
        #expect(Set(try await store.allDigests()) == digests)
        #expect(try await store.allDigests().count == digests.count)
        let gone = digests.first!
        try await store.delete(gone)
        try await store.delete(gone)  // an absent blob: no error
        #expect(Set(try await store.allDigests()) == digests.subtracting([gone]))
        #expect(await store.size(of: gone) == nil)
        await #expect(throws: StoreError.self) { _ = try await store.read(gone, limit: 1 << 20) }
    }

    func readIsBounded() async throws {
        let store = try await makeStore()
        let bytes = Self.bytes(5000, seed: 20)
        let digest = DigestHasher.digest(of: bytes)
        try await store.write(bytes, as: digest)
        await #expect(throws: StoreError.self) { _ = try await store.read(digest, limit: 4999) }
        #expect(try await store.read(digest, limit: 5000) == bytes)
    }
}
