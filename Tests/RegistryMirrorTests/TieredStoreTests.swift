import ContentStore
import Foundation
import OCI
import Testing

/// The local disk tier in front of a remote store (`storage.local_cache.max_size`), with a
/// file-system store standing in for the bucket.
@Suite struct TieredStoreTests {
    static func blob(_ fill: UInt8, _ count: Int = 1024) -> ([UInt8], Digest) {
        let bytes = [UInt8](repeating: fill, count: count)
        return (bytes, DigestHasher.digest(of: bytes))
    }

    @Test func downloadsLandInBothPeersStreamsInTheTierOnly() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let remote = try FileSystemStore(root: dir.path + "/remote")
        let tier = try TieredStore(remote: remote, localRoot: dir.path + "/tier", maxBytes: 1 << 20)

        let (bytes, digest) = Self.blob(1)
        let writer = try await tier.makeWriter(expecting: digest, size: Int64(bytes.count))
        #expect(try writer.openForReading() != nil, "clients stream a download from the tier's file")
        try bytes.withUnsafeBytes { try writer.write($0) }
        try await writer.commit()
        #expect(remote.size(of: digest) == 1024 && tier.local.size(of: digest) == 1024)
        #expect(tier.usage == (1024, 1))
        let reader = try #require(try await tier.openBlob(digest))
        #expect(reader.fileRegions != nil, "a tier hit is a local file, sent with sendfile")

        let (peerBytes, peerDigest) = Self.blob(2)
        let spool = try tier.makeSpool(expecting: peerDigest)
        try peerBytes.withUnsafeBytes { try spool.write($0) }
        try await spool.commit()
        #expect(remote.size(of: peerDigest) == nil, "a peer's stream is published by its downloader, not here")
        #expect(tier.local.size(of: peerDigest) == 1024)

        // A wrong blob is refused by both, and nothing is kept.
        let (_, other) = Self.blob(3)
        let bad = try await tier.makeWriter(expecting: other, size: nil)
        try bytes.withUnsafeBytes { try bad.write($0) }
        await #expect(throws: StoreError.self) { try await bad.commit() }
        #expect(remote.size(of: other) == nil && tier.local.size(of: other) == nil)

        try await tier.delete(digest)
        #expect(remote.size(of: digest) == nil && tier.local.size(of: digest) == nil)
        #expect(tier.usage.blobs == 1)
    }

    @Test func readsFromTheRemoteStoreAreCopiedInAndTheTierKeepsItsCap() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let remote = try FileSystemStore(root: dir.path + "/remote")
        let tier = try TieredStore(remote: remote, localRoot: dir.path + "/tier", maxBytes: 3 * 1024)
        var digests: [Digest] = []
        for fill in UInt8(10)..<15 {
            let (bytes, digest) = Self.blob(fill)
            try await remote.write(bytes, as: digest)
            digests.append(digest)
        }
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await tier.run() }
            for digest in digests {
                let reader = try #require(try await tier.openBlob(digest))
                #expect(try await reader.size() == 1024)
                // Wait for the background copy before the next read.
                let deadline = ContinuousClock.now + .seconds(10)
                while tier.local.size(of: digest) == nil, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
                #expect(tier.local.size(of: digest) == 1024, "a blob read from the remote store is copied into the tier")
                // Keep the first one hot: it is used after every copy.
                _ = try await tier.openBlob(digests[0])
            }
            group.cancelAll()
        }
        #expect(tier.usage.bytes <= 3 * 1024, "the tier holds \(tier.usage.bytes) bytes over its cap")
        #expect(tier.local.size(of: digests[0]) != nil, "the most recently used blob stays")
        #expect(tier.local.size(of: digests[1]) == nil, "the least recently used blob went first")
        #expect(try tier.local.allDigests().count == tier.usage.blobs)
        for digest in digests { #expect(remote.size(of: digest) == 1024, "the remote store keeps everything") }

        // A new process finds what the tier holds and counts it.
        let reopened = try TieredStore(remote: remote, localRoot: dir.path + "/tier", maxBytes: 3 * 1024)
        #expect(reopened.usage == tier.usage)
    }
}
