import ContentStore
import Foundation
import Logging
import MetadataIndex

/// A data directory: the blob store and the SQLite index beside it, or the PostgreSQL index
/// that `index.backend: postgres` names instead.
///
/// ```
/// <data-dir>/blobs/…          content-addressed blobs (see FileSystemStore)
/// <data-dir>/tmp/…            writes in progress, swept at start-up
/// <data-dir>/index.sqlite     the metadata index (WAL: -wal and -shm beside it)
/// ```
public struct DataDirectory: Sendable {
    public let path: String
    public let store: FileSystemStore
    public let index: any MetadataStore

    /// Opens the directory, creating it if missing, and the index `index` names.
    public init(path: String, index: IndexConfiguration = IndexConfiguration(),
                logger: Logger = Logger(label: "registry-mirror.index")) throws {
        do {
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        } catch {
            throw MirrorSetupError("cannot create data directory \(path): \(error.localizedDescription)")
        }
        self.path = path
        self.store = try FileSystemStore(root: path)
        self.index = try index.open(sqlitePath: path + "/index.sqlite", logger: logger)
    }
}

/// A problem that stops the mirror from starting.
public struct MirrorSetupError: Error, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
