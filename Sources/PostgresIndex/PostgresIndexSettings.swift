import Foundation
import MetadataIndex
import PostgresNIO

/// Where the PostgreSQL index lives and how to log in, parsed from a libpq-style URL:
///
/// ```
/// postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE?sslmode=disable|prefer|require
/// postgres://USER@/DATABASE?host=/run/postgresql          (a Unix socket directory)
/// ```
///
/// A password belongs in a file or the environment, not in the URL (it would show in
/// process lists and config dumps); `password` given here wins over one in the URL.
public struct PostgresIndexSettings: Sendable, Equatable, CustomStringConvertible, CustomDebugStringConvertible {
    public enum TLSMode: String, Sendable, Equatable {
        case disable, prefer, require
    }

    public var host: String
    public var port: Int
    /// A Unix socket path (`<dir>/.s.PGSQL.<port>`); when set, `host` is not used.
    public var socketPath: String?
    public var user: String
    public var password: String?
    public var database: String
    public var tls: TLSMode
    /// The most connections this process opens (`index.postgres.max_connections`).
    public var maxConnections: Int
    /// How long a call waits for a connection before it fails as unavailable, so `/readyz`
    /// and requests answer while PostgreSQL is down instead of queueing for a minute.
    public var connectTimeout: Duration

    public init(dsn: String, password: String? = nil, maxConnections: Int = 8,
                connectTimeout: Duration = .seconds(5)) throws(IndexError) {
        guard let url = URLComponents(string: dsn), let scheme = url.scheme,
              scheme == "postgres" || scheme == "postgresql" else {
            throw IndexError(.schema, "the PostgreSQL DSN must look like postgres://user@host:5432/database")
        }
        guard let user = url.user, !user.isEmpty else {
            throw IndexError(.schema, "the PostgreSQL DSN names no user (postgres://USER@host/database)")
        }
        let database = url.path.hasPrefix("/") ? String(url.path.dropFirst()) : url.path
        guard !database.isEmpty, !database.contains("/") else {
            throw IndexError(.schema, "the PostgreSQL DSN names no database (postgres://user@host/DATABASE)")
        }
        var query: [String: String] = [:]
        for item in url.queryItems ?? [] { query[item.name] = item.value ?? "" }
        for name in query.keys where !["sslmode", "host"].contains(name) {
            throw IndexError(.schema, "the PostgreSQL DSN has an unknown parameter \(name) (known: sslmode, host)")
        }
        guard let tls = TLSMode(rawValue: query["sslmode"] ?? "prefer") else {
            throw IndexError(.schema, "sslmode must be disable, prefer or require; got \(query["sslmode"] ?? "")")
        }
        self.user = user
        self.password = password ?? url.password
        self.database = database
        self.tls = tls
        self.port = url.port ?? 5432
        self.host = url.host ?? ""
        if let directory = query["host"], directory.hasPrefix("/") {
            self.socketPath = directory + "/.s.PGSQL.\(port)"
        } else if self.host.isEmpty {
            throw IndexError(.schema, "the PostgreSQL DSN names no host (postgres://user@HOST/database, or ?host=/socket/dir)")
        }
        guard maxConnections > 0 else { throw IndexError(.schema, "max_connections must be at least 1") }
        self.maxConnections = maxConnections
        self.connectTimeout = connectTimeout
    }

    /// Never shows the password.
    public var description: String {
        "\(user)@\(endpoint) sslmode=\(tls.rawValue) password=\(password == nil ? "-" : "<redacted>")"
    }

    public var debugDescription: String { description }

    /// Where it connects, without credentials, for logs and errors.
    public var endpoint: String {
        (socketPath ?? "\(host):\(port)") + "/" + database
    }

    var clientConfiguration: PostgresClient.Configuration {
        var configuration: PostgresClient.Configuration
        if let socketPath {
            configuration = .init(unixSocketPath: socketPath, username: user, password: password, database: database)
        } else {
            let tls: PostgresClient.Configuration.TLS = switch self.tls {
            case .disable: .disable
            case .prefer: .prefer(.makeClientConfiguration())
            case .require: .require(.makeClientConfiguration())
            }
            configuration = .init(host: host, port: port, username: user, password: password, database: database, tls: tls)
        }
        configuration.options.maximumConnections = maxConnections
        configuration.options.connectTimeout = connectTimeout
        configuration.options.additionalStartupParameters = [("application_name", "registry-mirror")]
        return configuration
    }
}
