import Foundation

/// `bench/throttle.py` in front of a real docker-registry: a TCP proxy that paces everything
/// the registry sends to one shared rate, as a slow link to a remote registry would, and
/// writes down each request's line and `Range` header. With `stripRange` it drops `Range`
/// headers, so the registry behind it looks like one without range support. The benchmark
/// (`bench/lazy-range.sh`) runs the same script.
final class ThrottledUpstream: Sendable {
    let port: Int
    let log: URL
    private let process: ChildProcess

    var host: String { "127.0.0.1:\(port)" }

    private init(port: Int, log: URL, process: ChildProcess) {
        self.port = port
        self.log = log
        self.process = process
    }

    /// `bytesPerSecond` is shared by every connection (nil: unpaced).
    static func start(to target: Int, bytesPerSecond: Int?, stripRange: Bool = false, in directory: URL) async throws -> ThrottledUpstream {
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let script = TestPaths.packageRoot.appendingPathComponent("bench/throttle.py")
        let log = directory.appendingPathComponent("requests.log")
        FileManager.default.createFile(atPath: log.path, contents: nil)
        let port = try Ports.free()
        let process = try ChildProcess(
            name: "throttle", program: try TestPaths.executable("python3"),
            arguments: [script.path, String(port), String(target), String(bytesPerSecond ?? 0), stripRange ? "1" : "0", log.path],
            logDirectory: directory)
        let proxy = ThrottledUpstream(port: port, log: log, process: process)
        do {
            try await waitUntil("the throttling proxy to answer on \(proxy.host)", process: process) {
                try RawHTTP.get(port: port, path: "/v2/").status == 200
            }
        } catch {
            await proxy.stop()
            throw error
        }
        return proxy
    }

    func stop() async { await process.stop() }

    /// One line per request: `GET /v2/…/blobs/sha256:… bytes=…` (or `-` for no `Range`).
    var requests: [String] {
        ((try? String(contentsOf: log, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
    }

    /// The requests for one path, as `METHOD RANGE` (`-` for no `Range`), sorted.
    func requests(for path: String) -> [String] {
        requests.compactMap { line in
            let parts = line.split(separator: " ", maxSplits: 2)
            guard parts.count == 3, parts[1] == path else { return nil }
            return "\(parts[0]) \(parts[2])"
        }.sorted()
    }
}
