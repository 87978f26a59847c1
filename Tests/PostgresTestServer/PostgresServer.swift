import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A throwaway PostgreSQL cluster for tests: `initdb` in a temporary directory, the server
/// on a free 127.0.0.1 port, trust authentication for the `postgres` user, fsync off.
/// `stop()` shuts it down with `pg_ctl` and removes the directory.
///
/// The postmaster runs as a child of the test process rather than daemonized by `pg_ctl
/// start`: Foundation's `Process` learns that a child ended when every holder of a socket it
/// gives the child has closed it, and a daemonized postmaster keeps that socket, so waiting
/// for `pg_ctl start` never returns. `pg_ctl` stops it.
///
/// PostgreSQL refuses to run as root, so when the tests run as root every server command
/// runs as the `postgres` user (`runuser -u postgres --`) and the directory is given to it.
/// The binaries come from `$REGISTRY_MIRROR_PG_BIN`, else Debian's `/usr/lib/postgresql/15/bin`
/// (`scripts/install-deps.sh --test` installs the `postgresql` package).
public final class PostgresServer: Sendable {
    public let port: Int
    /// The temporary directory: `data/` (the cluster), `server.log`, the Unix socket.
    public let directory: String
    private let binaries: String
    private let asPostgres: Bool
    private let postmaster = Mutex<Postmaster?>(nil)

    private init(port: Int, directory: String, binaries: String, asPostgres: Bool) {
        self.port = port
        self.directory = directory
        self.binaries = binaries
        self.asPostgres = asPostgres
    }

    /// Makes and starts a cluster. Throws (it does not skip) when PostgreSQL is not installed.
    public static func start() async throws -> PostgresServer {
        let binaries = ProcessInfo.processInfo.environment["REGISTRY_MIRROR_PG_BIN"] ?? "/usr/lib/postgresql/15/bin"
        guard FileManager.default.isExecutableFile(atPath: binaries + "/initdb") else {
            throw PostgresServerError("no initdb in \(binaries): install the postgresql package (scripts/install-deps.sh --test)")
        }
        let asPostgres = getuid() == 0
        let directory = NSTemporaryDirectory() + "registry-mirror-pg-" + UUID().uuidString.prefix(8).lowercased()
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        if asPostgres {
            try FileManager.default.setAttributes([.ownerAccountName: "postgres", .groupOwnerAccountName: "postgres"],
                                                  ofItemAtPath: directory)
        }
        do {
            let probe = PostgresServer(port: 0, directory: directory, binaries: binaries, asPostgres: asPostgres)
            try await probe.command("initdb", ["-D", directory + "/data", "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"])
            // A free port can be taken between the probe and the bind: try a few.
            var lastError: (any Error)?
            for _ in 1...3 {
                let server = PostgresServer(port: try freePort(), directory: directory, binaries: binaries, asPostgres: asPostgres)
                do {
                    try await server.restart()
                    return server
                } catch {
                    lastError = error
                }
            }
            throw lastError ?? PostgresServerError("the server did not start")
        } catch {
            try? FileManager.default.removeItem(atPath: directory)
            throw error
        }
    }

    /// A DSN for `database` as the `postgres` user over TCP, without TLS.
    public func dsn(database: String) -> String {
        "postgres://postgres@127.0.0.1:\(port)/\(database)?sslmode=disable"
    }

    /// Creates an empty database called `name`.
    public func createDatabase(_ name: String) async throws {
        try await command("createdb", ["-h", "127.0.0.1", "-p", String(port), "-U", "postgres", name])
    }

    /// Runs `sql` with psql in `database` and returns what it printed (unaligned, tuples only).
    @discardableResult
    public func psql(_ sql: String, database: String = "postgres") async throws -> String {
        try await command("psql", ["-h", "127.0.0.1", "-p", String(port), "-U", "postgres", "-d", database,
                                   "-v", "ON_ERROR_STOP=1", "-A", "-t", "-c", sql])
    }

    /// Stops the server (fast shutdown: sessions are cut) and keeps the data.
    public func halt() async throws {
        try await command("pg_ctl", ["-D", directory + "/data", "-m", "fast", "-w", "stop"])
        if let running = postmaster.withLock({ $0 }) { await running.exited() }
    }

    /// Starts the (halted) server on its port and waits until it accepts connections.
    public func restart() async throws {
        let log = directory + "/server.log"
        if !FileManager.default.fileExists(atPath: log) { FileManager.default.createFile(atPath: log, contents: nil) }
        guard let output = FileHandle(forWritingAtPath: log) else { throw PostgresServerError("cannot open \(log)") }
        output.seekToEndOfFile()
        let process = makeProcess("postgres", [
            "-D", directory + "/data", "-p", String(port), "-k", directory, "-c", "listen_addresses=127.0.0.1",
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off", "-c", "max_connections=200",
        ])
        process.standardOutput = output
        process.standardError = output
        let running = Postmaster()
        process.terminationHandler = { _ in running.markExited() }
        try process.run()
        try? output.close()
        postmaster.withLock { $0 = running }
        for _ in 0..<300 {
            if running.hasExited { break }
            if (try? await command("pg_isready", ["-h", "127.0.0.1", "-p", String(port), "-U", "postgres"])) != nil { return }
            try await Task.sleep(for: .milliseconds(100))
        }
        let tail = (try? String(contentsOfFile: log, encoding: .utf8))?.suffix(1500) ?? ""
        if !running.hasExited { _ = try? await command("pg_ctl", ["-D", directory + "/data", "-m", "immediate", "-w", "stop"]) }
        throw PostgresServerError("postgres did not start on port \(port):\n\(tail)")
    }

    /// Stops the server and removes its directory.
    public func stop() async {
        _ = try? await command("pg_ctl", ["-D", directory + "/data", "-m", "immediate", "-w", "stop"])
        if let running = postmaster.withLock({ $0 }) { await running.exited() }
        try? FileManager.default.removeItem(atPath: directory)
    }

    private func makeProcess(_ name: String, _ arguments: [String]) -> Process {
        let process = Process()
        if asPostgres {
            process.executableURL = URL(fileURLWithPath: "/usr/sbin/runuser")
            process.arguments = ["-u", "postgres", "--", binaries + "/" + name] + arguments
        } else {
            process.executableURL = URL(fileURLWithPath: binaries + "/" + name)
            process.arguments = arguments
        }
        process.currentDirectoryURL = URL(fileURLWithPath: directory)
        process.standardInput = FileHandle.nullDevice
        return process
    }

    /// Runs one of the PostgreSQL binaries (as `postgres` when root) and returns its stdout.
    @discardableResult
    private func command(_ name: String, _ arguments: [String]) async throws -> String {
        let process = makeProcess(name, arguments)
        let output = Pipe(), errors = Pipe()
        process.standardOutput = output
        process.standardError = errors
        let status: Int32 = try await withCheckedThrowingContinuation { continuation in
            process.terminationHandler = { continuation.resume(returning: $0.terminationStatus) }
            do {
                try process.run()
            } catch {
                process.terminationHandler = nil
                continuation.resume(throwing: error)
            }
        }
        let out = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let err = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        guard status == 0 else {
            let log = (try? String(contentsOfFile: directory + "/server.log", encoding: .utf8))?.suffix(1500) ?? ""
            throw PostgresServerError("\(name) \(arguments.joined(separator: " ")) exited with \(status): \(err)\(out)\n\(log)")
        }
        return out
    }

    private static func freePort() throws -> Int { try LoopbackPort.free() }
}

/// The running postmaster: whether it has exited, and who waits for that.
private final class Postmaster: Sendable {
    private let state = Mutex<(exited: Bool, waiting: [CheckedContinuation<Void, Never>])>((false, []))
    var hasExited: Bool { state.withLock { $0.exited } }
    func markExited() {
        let waiting = state.withLock { state in
            state.exited = true
            defer { state.waiting = [] }
            return state.waiting
        }
        for waiter in waiting { waiter.resume() }
    }
    func exited() async {
        await withCheckedContinuation { continuation in
            let done = state.withLock { state in
                if !state.exited { state.waiting.append(continuation) }
                return state.exited
            }
            if done { continuation.resume() }
        }
    }
}

public struct PostgresServerError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}

/// Free loopback ports for the test servers (PostgreSQL, moto, the mirror): every test target
/// links this module.
public enum LoopbackPort {
    /// A TCP port on 127.0.0.1 that nothing listened on a moment ago.
    public static func free() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw PostgresServerError("socket() failed") }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        guard bound else { throw PostgresServerError("bind() to a free port failed") }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}
