import Foundation

/// Polls `probe` every 50 ms until it returns true, the process dies, or `timeout` passes.
func waitUntil(
    _ what: String, timeout: Duration = .seconds(30), process: ChildProcess? = nil,
    probe: () throws -> Bool
) async throws {
    let clock = ContinuousClock()
    let deadline = clock.now + timeout
    var lastError: (any Error)?
    while clock.now < deadline {
        do {
            if try probe() { return }
        } catch {
            lastError = error
        }
        if let process, !process.isRunning {
            throw E2EError("\(process.name) exited (status \(process.terminationStatus.map(String.init) ?? "?")) while waiting for \(what)\n--- stdout ---\n\(process.stdout.suffix(3000))\n--- stderr ---\n\(process.stderr.suffix(3000))")
        }
        try await Task.sleep(for: .milliseconds(50))
    }
    var message = "timed out after \(timeout) waiting for \(what)"
    if let lastError { message += " (last error: \(lastError))" }
    if let process { message += "\n--- stderr ---\n\(process.stderr.suffix(3000))" }
    throw E2EError(message)
}

/// A real CNCF Distribution registry (`docker-registry serve`), with its own config (Debian's
/// default turns on htpasswd auth), filesystem storage in a temporary directory, on a free
/// loopback port. Stopped by `stop()` or on deinit, whichever comes first.
final class DistributionRegistry: @unchecked Sendable {
    let port: Int
    let directory: TemporaryDirectory
    private let process: ChildProcess

    var host: String { "127.0.0.1:\(port)" }

    private init(port: Int, directory: TemporaryDirectory, process: ChildProcess) {
        self.port = port
        self.directory = directory
        self.process = process
    }

    /// `extraConfig` is appended to the YAML config (an `auth:` section, say). The access log
    /// is on, so tests can count what the registry was asked (`requests(since:)`).
    /// With auth on, `GET /v2/` answers 401: pass the challenge scheme (`basic`, `bearer`)
    /// to count that answer as "up".
    static func start(extraConfig: String = "", challenge: String? = nil) async throws -> DistributionRegistry {
        let program = try TestPaths.executable("docker-registry")
        var failures: [String] = []
        // The free port can be taken between probing and binding; try a few.
        for attempt in 1...3 {
            let directory = try TemporaryDirectory(prefix: "registry-mirror-e2e-distribution")
            let storage = try directory.subdirectory("storage")
            let port = try Ports.free()
            let config = directory.url.appendingPathComponent("config.yml")
            let yaml = """
                version: 0.1
                log: {level: warn, accesslog: {disabled: false}}
                storage: {filesystem: {rootdirectory: \(storage.path)}, delete: {enabled: true}}
                http: {addr: 127.0.0.1:\(port)}
                \(extraConfig)

                """
            try yaml.write(to: config, atomically: true, encoding: .utf8)
            let process = try ChildProcess(
                name: "docker-registry", program: program, arguments: ["serve", config.path],
                logDirectory: directory.url)
            let registry = DistributionRegistry(port: port, directory: directory, process: process)
            do {
                try await waitUntil("docker-registry to answer GET /v2/ on \(registry.host)", process: process) {
                    let response = try RawHTTP.get(port: port, path: "/v2/")
                    if let challenge {
                        return response.status == 401 && (response.header("WWW-Authenticate") ?? "").lowercased().hasPrefix(challenge.lowercased())
                    }
                    return response.status == 200
                }
                return registry
            } catch {
                failures.append("attempt \(attempt): \(error)")
                await registry.stop()
            }
        }
        throw E2EError("docker-registry did not start:\n" + failures.joined(separator: "\n"))
    }

    func stop() async { await process.stop() }

    var stderr: String { process.stderr }

    /// The access log (stdout, one combined-format line per request, User-Agent last).
    var accessLog: String { process.stdout }

    /// A new docker-registry on the same port, config and storage, once this one was stopped:
    /// an upstream coming back. The caller stops it.
    func restarted() async throws -> DistributionRegistry {
        let program = try TestPaths.executable("docker-registry")
        let process = try ChildProcess(
            name: "docker-registry", program: program, arguments: ["serve", directory.url.appendingPathComponent("config.yml").path],
            logDirectory: try directory.subdirectory("restarted-\(UUID().uuidString.prefix(6))"))
        let registry = DistributionRegistry(port: port, directory: directory, process: process)
        do {
            try await waitUntil("docker-registry to answer again on \(host)", process: process) {
                try RawHTTP.get(port: port, path: "/v2/").status == 200
            }
        } catch {
            await registry.stop()
            throw error
        }
        return registry
    }

    /// One access-log line: what the registry was asked and what it answered.
    struct Request: Sendable, Equatable, CustomStringConvertible {
        let method: String
        let path: String
        let status: Int
        var description: String { "\(method) \(path) \(status)" }
    }

    /// Every request logged so far (the access log goes to stdout, one combined-format line each).
    var requests: [Request] {
        process.stdout.split(separator: "\n").compactMap { line in
            guard let open = line.firstIndex(of: "\""), let close = line[line.index(after: open)...].firstIndex(of: "\"") else { return nil }
            let request = line[line.index(after: open)..<close].split(separator: " ")
            let after = line[line.index(after: close)...].split(separator: " ")
            guard request.count >= 2, let status = after.first.flatMap({ Int($0) }) else { return nil }
            return Request(method: String(request[0]), path: String(request[1]), status: status)
        }
    }

    /// Requests logged after `mark` (a previous `requests.count`), waiting briefly for the log to flush.
    func requests(since mark: Int) async -> [Request] {
        try? await Task.sleep(for: .milliseconds(200))
        return Array(requests.dropFirst(mark))
    }
}

/// `registry-mirror serve --listen 127.0.0.1:0 --data-dir DIR`, its port read from the
/// "registry-mirror listening on http://127.0.0.1:PORT" line it prints once it is up.
final class MirrorProcess: @unchecked Sendable {
    let port: Int
    private let process: ChildProcess

    var host: String { "127.0.0.1:\(port)" }
    var stderr: String { process.stderr }

    private init(port: Int, process: ChildProcess) {
        self.port = port
        self.process = process
    }

    static let listeningPrefix = "registry-mirror listening on http://127.0.0.1:"
    /// With `http.tls.*` set.
    static let tlsListeningPrefix = "registry-mirror listening on https://127.0.0.1:"

    /// `--offline` by default: the mirror serves only what was imported and never reaches for an
    /// upstream (without it, it would try Docker Hub, which a sandbox cannot reach).
    /// `launcher`: a command that ends by exec'ing its arguments (`prlimit --nofile=…`), to run
    /// the mirror under other limits or namespaces; its pid stays the mirror's.
    /// `tls`: the mirror serves HTTPS (its environment sets `http.tls.*`); then it is up once it
    /// prints its line, and the caller probes it with a client that trusts its CA.
    /// `listen`: a fixed port, for a process that must come back where it was (a fleet replica).
    static func start(dataDirectory: URL, logDirectory: URL, extraArguments: [String] = ["--offline"],
                      environment: [String: String]? = nil, launcher: [String] = [], tls: Bool = false,
                      listen: String = "127.0.0.1:0") async throws -> MirrorProcess {
        let binary = try TestPaths.requireMirrorBinary()
        let command = launcher + [binary, "serve", "--listen", listen, "--data-dir", dataDirectory.path] + extraArguments
        let process = try ChildProcess(
            name: "registry-mirror-serve", program: command[0], arguments: Array(command.dropFirst()),
            logDirectory: logDirectory, environment: environment)
        var port: Int?
        do {
            try await waitUntil("registry-mirror to print its listening line", process: process) {
                let prefix = tls ? tlsListeningPrefix : listeningPrefix
                for line in process.stdout.split(separator: "\n") where line.hasPrefix(prefix) {
                    port = Int(line.dropFirst(prefix.count).trimmingCharacters(in: .whitespaces))
                    if port != nil { return true }
                }
                return false
            }
            guard let port, port > 0 else { throw E2EError("registry-mirror printed no usable port: \(process.stdout)") }
            if tls { return MirrorProcess(port: port, process: process) }
            // /healthz, not /v2/: it answers 200 with client auth on, too.
            try await waitUntil("registry-mirror to answer GET /healthz", process: process) {
                try RawHTTP.get(port: port, path: "/healthz").status == 200
            }
            return MirrorProcess(port: port, process: process)
        } catch {
            await process.stop()
            throw error
        }
    }

    func stop() async { await process.stop() }

    /// Runs `body` on this mirror, then stops it however `body` ends.
    func stopping<T>(after body: (MirrorProcess) async throws -> T) async throws -> T {
        do {
            let result = try await body(self)
            await stop()
            return result
        } catch {
            await stop()
            throw error
        }
    }

    /// SIGTERM, as a service manager stops it: the exit status, or nil if it did not exit
    /// within `timeout` (then it is killed).
    func terminate(timeout: Duration) async -> Int32? { await process.terminate(timeout: timeout) }

    /// SIGKILL, no grace: a crash, as far as the data directory can tell.
    func kill() async { await process.kill() }

    /// The `registry-mirror` process itself (it runs under `timeout(1)`), for /proc.
    var serverPID: Int32? {
        let children = (try? String(contentsOfFile: "/proc/\(process.pid)/task/\(process.pid)/children", encoding: .utf8)) ?? ""
        return children.split(separator: " ").first.flatMap { Int32($0) }
    }
}

/// The registry-mirror CLI's one-shot subcommands.
enum MirrorCLI {
    static func run(_ arguments: [String]) async throws -> CommandResult {
        try await Command.run(try TestPaths.requireMirrorBinary(), arguments)
    }

    static func importBundle(_ path: String, as reference: String?, dataDirectory: URL) async throws -> CommandResult {
        var arguments = ["import", path, "--data-dir", dataDirectory.path]
        if let reference { arguments += ["--as", reference] }
        return try await run(arguments)
    }

    static func list(dataDirectory: URL) async throws -> CommandResult {
        try await run(["ls", "--data-dir", dataDirectory.path])
    }

    static func verify(dataDirectory: URL) async throws -> CommandResult {
        try await run(["verify", "--data-dir", dataDirectory.path])
    }
}
