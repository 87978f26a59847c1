import ContentStore
import Foundation
import Logging
import MetadataIndex
import S3Store

/// A data directory: the blob store and the SQLite index beside it, or the PostgreSQL index
/// that `index.backend: postgres` names instead.
///
/// ```
/// <data-dir>/blobs/…          content-addressed blobs (see FileSystemStore)
/// <data-dir>/tmp/…            writes in progress, swept at start-up
/// <data-dir>/index.sqlite     the metadata index (WAL: -wal and -shm beside it)
/// <data-dir>/spool/           with blobs in S3: downloads in progress (unlinked at once)
/// ```
public struct DataDirectory: Sendable {
    public let path: String
    /// The local blob store (the file tools: import, export, verify, gc).
    public let store: FileSystemStore
    /// The store that serves and fills: `store`, or the S3 bucket of `storage.backend: s3`.
    public let blobs: any BlobStore
    /// The bucket of `storage.backend: s3` (inside `blobs`), for readiness and the upload sweep.
    public let s3: S3Store?
    public let index: any MetadataStore

    /// Opens the directory, creating it if missing, and the index `index` names; with `s3`,
    /// blobs are served from that bucket.
    public init(path: String, index: IndexConfiguration = IndexConfiguration(), s3: S3StorageSettings? = nil,
                logger: Logger = Logger(label: "registry-mirror.index")) throws {
        do {
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        } catch {
            throw MirrorSetupError("cannot create data directory \(path): \(error.localizedDescription)")
        }
        self.path = path
        self.store = try FileSystemStore(root: path)
        let remote = try s3?.makeStore(dataDirectory: path)
        self.blobs = remote?.spooled ?? store
        self.s3 = remote?.s3
        self.index = try index.open(sqlitePath: path + "/index.sqlite", logger: logger)
    }
}

/// A problem that stops the mirror from starting.
public struct MirrorSetupError: Error, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
