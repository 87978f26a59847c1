import Foundation
import Logging
import MetadataIndex
import OCI
import PostgresNIO
import Synchronization

/// The metadata index in a PostgreSQL database, shared by every replica of a fleet.
///
/// Connections come from a `PostgresClient` pool whose `run()` task this store owns: it
/// starts with the store and ends with `close()` (or when the store goes away). The schema is
/// migrated on the first call that reaches the database, not at construction, so a replica
/// whose database is down still starts and reports "index down" on `/readyz` until the
/// database is back. Every statement sends its values as bind parameters.
///
/// Same semantics as `SQLiteMetadataStore` (both pass `MetadataStoreConformance`); what
/// differs is concurrency. Writes from many replicas meet here: record batches take a shared
/// advisory lock and an eviction pass takes it exclusively, so a pass never deletes a blob
/// whose reference a concurrent fill is inserting, and two replicas never evict at once. A
/// write transaction that loses a deadlock or serialization conflict is retried.
public final class PostgresMetadataStore: MetadataStore {
    public let settings: PostgresIndexSettings
    let client: PostgresClient
    let logger: Logger
    private let runner: Task<Void, Never>
    /// The schema version once this process has migrated (or found it current).
    private let migrated = Mutex<Int?>(nil)
    private let statementCount = Atomic<Int>(0)

    /// `advisory_xact_lock` key that orders record batches (shared) and eviction (exclusive).
    static let contentLockKey: Int64 = 0x726D_636F_6E74_656E

    public init(_ settings: PostgresIndexSettings, logger: Logger = Logger(label: "registry-mirror.index")) {
        self.settings = settings
        self.logger = logger
        // The pool logs every failed connect attempt (several a second while the database is
        // down) at info; `/readyz` and the calls' own errors already say so.
        var background = logger
        if background.logLevel > .debug { background.logLevel = max(background.logLevel, .warning) }
        let client = PostgresClient(configuration: settings.clientConfiguration, backgroundLogger: background)
        self.client = client
        // Detached: the pool must not inherit a graceful-shutdown signal from whoever opened the
        // store, or it would close before the server's last access-time flush.
        self.runner = Task.detached { await client.run() }
    }

    deinit { runner.cancel() }

    /// Closes the pool: running calls finish, later ones fail with `.unavailable`.
    public func close() async {
        runner.cancel()
        await runner.value
    }

    /// Calls that reached the database since the store opened (each leased a connection).
    /// The warm paths are measured by it: they must not grow it.
    public var roundTrips: Int { statementCount.load(ordering: .relaxed) }

    // MARK: Calls

    /// Runs `body` on a pooled connection (after migrations), mapping every failure to an
    /// `IndexError`: `.unavailable` when no connection comes within `connectTimeout`.
    func withConnection<T: Sendable>(
        _ what: String, _ body: @escaping @Sendable (PostgresConnection) async throws -> T
    ) async throws(IndexError) -> T {
        statementCount.add(1, ordering: .relaxed)
        let leased = LeaseFlag()
        let timeout = settings.connectTimeout
        do {
            return try await withThrowingTaskGroup(of: T?.self) { group in
                group.addTask {
                    try await self.client.withConnection { connection in
                        leased.set()
                        try await self.migrateIfNeeded(connection)
                        return try await body(connection)
                    }
                }
                // Only the wait for a connection is bounded: a long eviction is not cut short.
                group.addTask {
                    try await Task.sleep(for: timeout)
                    if !leased.isSet { throw ConnectTimeout() }
                    return nil
                }
                while let next = try await group.next() {
                    if let value = next {
                        group.cancelAll()
                        return value
                    }
                }
                throw CancellationError()
            }
        } catch {
            throw mapped(error, what)
        }
    }

    /// Runs `body` in one transaction, retried when it loses a deadlock or a serialization
    /// conflict to another replica's transaction.
    func transaction<T: Sendable>(
        _ what: String, commit: Bool = true, _ body: @escaping @Sendable (PostgresConnection) async throws -> T
    ) async throws(IndexError) -> T {
        var attempt = 1
        while true {
            do {
                return try await withConnection(what) { [logger] connection in
                    try await connection.transaction(commit: commit, logger: logger, body)
                }
            } catch {
                guard attempt < 3, let failure = error.cause as? PostgresFailure, failure.isTransient else { throw error }
                logger.debug("index transaction retried", metadata: ["index.call": "\(what)", "index.sqlstate": "\(failure.sqlState ?? "")"])
                attempt += 1
            }
        }
    }

    /// Rows of one statement, mapped.
    func rows<T: Sendable>(
        _ what: String, _ query: PostgresQuery, _ map: @escaping @Sendable (PostgresRow) throws -> T
    ) async throws(IndexError) -> [T] {
        try await withConnection(what) { [logger] connection in try await connection.rows(query, logger: logger, map) }
    }

    private func migrateIfNeeded(_ connection: PostgresConnection) async throws {
        guard migrated.withLock({ $0 }) == nil else { return }
        let version = try await PostgresMigrations.apply(on: connection, logger: logger)
        migrated.withLock { $0 = version }
    }

    private func mapped(_ error: any Error, _ what: String) -> IndexError {
        switch error {
        case let error as IndexError:
            return error
        case is ConnectTimeout:
            return IndexError(.unavailable, "\(what): no connection to PostgreSQL at \(settings.endpoint) within \(settings.connectTimeout)")
        case let error as PSQLError:
            let failure = PostgresFailure(error)
            let unreachable: Set<PSQLError.Code> = [
                .connectionError, .serverClosedConnection, .clientClosedConnection, .uncleanShutdown, .poolClosed,
                .sslUnsupported, .failedToAddSSLHandler,
            ]
            // 57P01..57P03: the server is shutting down or starting; 08xxx: connection exceptions.
            if unreachable.contains(error.code) || failure.sqlState?.hasPrefix("57P") == true || failure.sqlState?.hasPrefix("08") == true {
                return IndexError(.unavailable, "\(what): PostgreSQL at \(settings.endpoint) is unreachable", cause: failure)
            }
            return IndexError(.io, "\(what) failed", cause: failure)
        case let error as RowDecodingFailure:
            return IndexError(.io, "\(what): a row does not read back", cause: error)
        case is CancellationError:
            return IndexError(.closed, "\(what) was cancelled")
        default:
            // The pool's own errors (circuit breaker open, shut down) and connect failures.
            return IndexError(.unavailable, "\(what): PostgreSQL at \(settings.endpoint) is unreachable: \(String(describing: error))")
        }
    }

    public func schemaVersion() async throws(IndexError) -> Int {
        // Asks the database every time: `/readyz` uses it as the index's health check.
        try await withConnection("schema version") { [logger] connection in
            try await PostgresMigrations.version(on: connection, logger: logger)
        }
    }
}

/// Set once a connection was leased: the connect timeout no longer applies.
private final class LeaseFlag: Sendable {
    private let value = Atomic<Bool>(false)
    func set() { value.store(true, ordering: .releasing) }
    var isSet: Bool { value.load(ordering: .acquiring) }
}

private struct ConnectTimeout: Error {}
