import Foundation
import Logging
import MetadataIndex
import PostgresIndex

/// `index.*`: which metadata index the mirror uses. SQLite in the data directory is the
/// embedded default; PostgreSQL is for a fleet of replicas that share one index.
public struct IndexConfiguration: Sendable, Equatable, CustomStringConvertible {
    public enum Backend: String, Sendable, Equatable {
        case sqlite, postgres
    }

    /// `index.backend`.
    public var backend = Backend.sqlite
    /// `index.postgres.*` with the password resolved; set when `backend` is `postgres`.
    public var postgres: PostgresIndexSettings?

    public init() {}

    /// The environment variable that holds the PostgreSQL password when no
    /// `index.postgres.password_file` is given.
    public static let passwordVariable = "REGISTRY_MIRROR_POSTGRES_PASSWORD"

    public var description: String {
        guard backend == .postgres, let postgres else { return "sqlite" }
        return "postgres(\(postgres))"
    }

    /// Opens the index this configuration names; `sqlitePath` is where SQLite's file lives.
    func open(sqlitePath: String, logger: Logger) throws -> any MetadataStore {
        switch backend {
        case .sqlite:
            return try SQLiteMetadataStore(path: sqlitePath)
        case .postgres:
            guard let postgres else { throw MirrorSetupError("index.backend is postgres but index.postgres.dsn is not set") }
            return PostgresMetadataStore(postgres, logger: logger)
        }
    }
}

extension MirrorConfiguration {
    static let indexKeys: [(path: String, environment: String)] = [
        ("index.backend", "REGISTRY_MIRROR_INDEX_BACKEND"),
        ("index.postgres.dsn", "REGISTRY_MIRROR_INDEX_POSTGRES_DSN"),
        ("index.postgres.password_file", "REGISTRY_MIRROR_INDEX_POSTGRES_PASSWORD_FILE"),
        ("index.postgres.max_connections", "REGISTRY_MIRROR_INDEX_POSTGRES_MAX_CONNECTIONS"),
        ("index.postgres.connect_timeout", "REGISTRY_MIRROR_INDEX_POSTGRES_CONNECT_TIMEOUT"),
    ]

    /// Validates `index.*`; the password comes from `password_file`, else the environment.
    mutating func applyIndex(_ values: [String: String], environment: [String: String], problems: inout [String]) {
        if let v = values["index.backend"] {
            if let backend = IndexConfiguration.Backend(rawValue: v.lowercased()) { index.backend = backend } else {
                problems.append("index.backend: must be sqlite or postgres; got \"\(v)\"")
            }
        }
        let postgresKeys = Self.indexKeys.map(\.path).filter { $0.hasPrefix("index.postgres.") }
        guard index.backend == .postgres else {
            for key in postgresKeys where values[key] != nil {
                problems.append("\(key): set, but index.backend is not postgres")
            }
            return
        }
        guard let dsn = values["index.postgres.dsn"], !dsn.isEmpty else {
            problems.append("index.postgres.dsn: required when index.backend is postgres (postgres://user@host:5432/database)")
            return
        }
        var password = environment[IndexConfiguration.passwordVariable]
        if let file = values["index.postgres.password_file"] {
            if let text = try? String(contentsOfFile: file, encoding: .utf8) {
                password = text.trimmingCharacters(in: .newlines)
            } else {
                problems.append("index.postgres.password_file: \(file) cannot be read")
            }
        }
        var maxConnections = 8
        if let v = values["index.postgres.max_connections"] {
            if let n = Int(v), (1...1000).contains(n) { maxConnections = n } else {
                problems.append("index.postgres.max_connections: must be a whole number from 1 to 1000; got \"\(v)\"")
            }
        }
        var connectTimeout: Duration = .seconds(5)
        if let v = values["index.postgres.connect_timeout"] {
            if let d = UpstreamSpec.duration(v), d > .zero { connectTimeout = d } else {
                problems.append("index.postgres.connect_timeout: must be a duration like 5s; got \"\(v)\"")
            }
        }
        do {
            index.postgres = try PostgresIndexSettings(dsn: dsn, password: password, maxConnections: maxConnections,
                                                      connectTimeout: connectTimeout)
        } catch {
            problems.append("index.postgres.dsn: \(error.message)")
        }
    }
}
