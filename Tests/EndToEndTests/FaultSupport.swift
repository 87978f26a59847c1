import Foundation
import OCI
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// What one client saw of one response, however it ended: a complete response, a body cut
/// short by FIN or RST, or no response at all.
struct FaultResponse: Sendable, CustomStringConvertible {
    /// nil when no complete header block arrived.
    var status: Int?
    var headers: [(name: String, value: String)] = []
    var body: [UInt8] = []
    /// How the read ended: "eof", "error: errno N (…)", "timeout".
    var ending = ""
    /// Any failure before the response (connect, send).
    var failure: String?

    func header(_ name: String) -> String? {
        headers.first { $0.name.caseInsensitiveCompare(name) == .orderedSame }?.value
    }

    var contentLength: Int? { header("Content-Length").flatMap { Int($0.trimmingCharacters(in: .whitespaces)) } }

    /// A 200 whose body is exactly `Content-Length` bytes long and ended cleanly.
    var isCompleteOK: Bool { status == 200 && contentLength == body.count && ending == "eof" }

    var errorCodes: [String]? {
        guard let object = try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any],
              let errors = object["errors"] as? [[String: Any]] else { return nil }
        return errors.compactMap { $0["code"] as? String }
    }

    var description: String {
        let head = headers.map { "\($0.name): \($0.value)" }.joined(separator: "; ")
        let bodyText = (status ?? 0) >= 300 ? " body: \(String(decoding: body.prefix(400), as: UTF8.self))" : ""
        return "status \(status.map(String.init) ?? "none"), \(body.count) body bytes (Content-Length \(contentLength.map(String.init) ?? "-")), ended by \(ending)\(failure.map { ", failure: \($0)" } ?? "") [\(head)]\(bodyText)"
    }
}

/// One request on its own thread (never blocking the Swift concurrency pool, so that several
/// can be in flight at once), over a raw socket, recording whatever arrives.
final class FaultRequest: Sendable {
    private struct State {
        var headersSeen = false
        var result: FaultResponse?
    }
    private let state = Mutex(State())

    static func start(_ method: String = "GET", port: Int, path: String, headers: [(String, String)] = [],
                      timeout: Int = 30) -> FaultRequest {
        let request = FaultRequest()
        let thread = Thread {
            let response = request.perform(method, port: port, path: path, headers: headers, timeout: timeout)
            request.state.withLock { $0.result = response }
        }
        thread.name = "fault-client"
        thread.start()
        return request
    }

    /// Starts a request and waits for it to end.
    static func get(port: Int, path: String, headers: [(String, String)] = []) async throws -> FaultResponse {
        try await start(port: port, path: path, headers: headers).result()
    }

    /// True once the response's header block arrived.
    var headersSeen: Bool { state.withLock { $0.headersSeen } }

    /// True once the request ended, however.
    var isFinished: Bool { state.withLock { $0.result != nil } }

    func result(timeout: Duration = .seconds(60)) async throws -> FaultResponse {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while clock.now < deadline {
            if let result = state.withLock({ $0.result }) { return result }
            try await Task.sleep(for: .milliseconds(10))
        }
        throw E2EError("a client request did not end within \(timeout)")
    }

    private func perform(_ method: String, port: Int, path: String, headers: [(String, String)], timeout: Int) -> FaultResponse {
        var response = FaultResponse()
        let fd: Int32
        do {
            fd = try RawHTTP.connectLoopback(port: port, timeout: timeout)
        } catch {
            response.failure = "\(error)"
            return response
        }
        defer { close(fd) }
        var text = "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\nUser-Agent: registry-mirror-e2e-fault\r\nConnection: close\r\n"
        for (name, value) in headers { text += "\(name): \(value)\r\n" }
        text += "\r\n"
        let bytes = Array(text.utf8)
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else {
                response.failure = "send failed: errno \(errno)"
                return response
            }
            sent += n
        }
        var raw: [UInt8] = []
        var headerEnd: Int?
        var buffer = [UInt8](repeating: 0, count: 256 * 1024)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n == 0 {
                response.ending = "eof"
                break
            }
            if n < 0 {
                let code = errno
                if code == EINTR { continue }
                response.ending = (code == EAGAIN || code == EWOULDBLOCK) ? "timeout" : "error: errno \(code) (\(String(cString: strerror(code))))"
                break
            }
            raw.append(contentsOf: buffer[0..<n])
            if headerEnd == nil, let range = raw.firstRange(of: [13, 10, 13, 10]) {
                headerEnd = range.upperBound
                state.withLock { $0.headersSeen = true }
            }
        }
        guard let headerEnd else {
            response.failure = "no complete header block in \(raw.count) bytes"
            return response
        }
        var lines = String(decoding: raw[..<(headerEnd - 4)], as: UTF8.self).components(separatedBy: "\r\n")
        let statusParts = lines.removeFirst().split(separator: " ", maxSplits: 2)
        response.status = statusParts.count >= 2 ? Int(statusParts[1]) : nil
        for line in lines {
            guard let colon = line.firstIndex(of: ":") else { continue }
            response.headers.append((String(line[..<colon]), line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)))
        }
        response.body = Array(raw[headerEnd...])
        if response.header("Transfer-Encoding")?.lowercased().contains("chunked") == true {
            if let body = try? RawHTTP.dechunk(response.body, context: path) { response.body = body } else { response.ending += " (chunked body incomplete)" }
        }
        return response
    }
}

/// A fresh fake upstream serving a `FaultImage`, and a fresh mirror in front of it (its own
/// data directory, `--upstream http://127.0.0.1:PORT`), torn down whatever happens.
struct FaultEnvironment: Sendable {
    let work: TemporaryDirectory
    let image: FaultImage
    let upstream: FaultUpstream
    let mirror: MirrorProcess
    let dataDirectory: URL
    /// What `serve` got besides `--listen` and `--data-dir`, so another can start on the same data.
    let mirrorArguments: [String]

    /// With `credentials` or `upstreamSettings` (more keys of the upstream's entry, such as
    /// `response_timeout`), the mirror runs with `--config` naming the fake as its only upstream
    /// (`up`); otherwise with `--upstream`.
    static func with(layerSizes: [Int], credentials: (username: String, password: String)? = nil,
                     upstreamSettings: [(key: String, value: String)] = [], logLevel: String = "debug",
                     _ body: (FaultEnvironment) async throws -> Void) async throws {
        _ = try TestPaths.requireMirrorBinary()
        let work = try TemporaryDirectory(prefix: "registry-mirror-e2e-fault")
        defer { work.remove() }
        let image = FaultImage.make(layerSizes: layerSizes)
        let upstream = try FaultUpstream.start(image: image)
        let dataDirectory = work.url.appendingPathComponent("data")
        let mirror: MirrorProcess
        var arguments = ["--upstream", "http://\(upstream.host)"]
        do {
            var settings = upstreamSettings
            if let credentials {
                let passwordFile = work.url.appendingPathComponent("upstream-password")
                try Data((credentials.password + "\n").utf8).write(to: passwordFile)
                settings = [("username", credentials.username), ("password_file", passwordFile.path)] + settings
            }
            if !settings.isEmpty {
                let config = work.url.appendingPathComponent("mirror.yaml")
                let entry = settings.map { "    \($0.key): \($0.value)\n" }.joined()
                try Data("upstreams:\n  - name: up\n    url: http://\(upstream.host)\n\(entry)".utf8).write(to: config)
                arguments = ["--config", config.path]
            }
            arguments += ["--log-level", logLevel]
            mirror = try await MirrorProcess.start(
                dataDirectory: dataDirectory, logDirectory: try work.subdirectory("logs"), extraArguments: arguments)
        } catch {
            await upstream.stop()
            throw error
        }
        let environment = FaultEnvironment(work: work, image: image, upstream: upstream, mirror: mirror,
                                           dataDirectory: dataDirectory, mirrorArguments: arguments)
        do {
            try await body(environment)
        } catch {
            await mirror.stop()
            await upstream.stop()
            throw error
        }
        await mirror.stop()
        await upstream.stop()
    }

    /// Another `serve` on the same data directory and upstream, with its own logs; the caller stops it.
    func startAnotherMirror() async throws -> MirrorProcess {
        try await MirrorProcess.start(dataDirectory: dataDirectory, logDirectory: try work.subdirectory("logs-\(UUID().uuidString.prefix(6))"),
                                      extraArguments: mirrorArguments)
    }

    var port: Int { mirror.port }

    static func blobPath(_ digest: Digest) -> String { "/v2/\(FaultImage.repository)/blobs/\(digest)" }
    static func manifestPath(_ reference: String) -> String { "/v2/\(FaultImage.repository)/manifests/\(reference)" }

    /// Where a verified blob lives: DATA/blobs/sha256/<2 hex>/<hex>.
    func blobFile(_ digest: Digest) -> URL {
        dataDirectory.appendingPathComponent("blobs/\(digest.algorithm.rawValue)/\(digest.hex.prefix(2))/\(digest.hex)")
    }

    func blobFileExists(_ digest: Digest) -> Bool { FileManager.default.fileExists(atPath: blobFile(digest).path) }

    /// Waits (up to `timeout`) for the blob file: a fill hands out its last byte once the digest
    /// is verified, before fsync and rename, so the file may land just after the client's 200.
    func awaitBlobFile(_ digest: Digest, timeout: Duration = .seconds(5)) async -> Bool {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while clock.now < deadline {
            if blobFileExists(digest) { return true }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return blobFileExists(digest)
    }

    /// Every file under DATA/blobs.
    var blobFiles: [String] { Files.regularFiles(under: dataDirectory.appendingPathComponent("blobs")) }

    /// `.part` files anywhere under DATA/tmp.
    var partFiles: [String] { Files.regularFiles(under: dataDirectory.appendingPathComponent("tmp")).filter { $0.hasSuffix(".part") } }

    /// Waits (up to `timeout`) until DATA/tmp holds no `.part` file; the ones left, if any.
    func settledPartFiles(timeout: Duration = .seconds(5)) async -> [String] {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while clock.now < deadline {
            if partFiles.isEmpty { return [] }
            try? await Task.sleep(for: .milliseconds(50))
        }
        return partFiles
    }

    /// `registry-mirror verify` passes (every stored blob hashes to its name, every indexed
    /// blob is stored), and it checked exactly the files under DATA/blobs.
    func expectConsistentStore(_ context: String, sourceLocation: SourceLocation = #_sourceLocation) async throws {
        let result = try await MirrorCLI.verify(dataDirectory: dataDirectory)
        #expect(result.succeeded, "\(context): verify: \(result.summary)", sourceLocation: sourceLocation)
        let files = blobFiles
        #expect(result.stdout.contains("checked \(files.count) blobs"), "\(context): verify checked other than the \(files.count) stored files \(files): \(result.stdout)",
                sourceLocation: sourceLocation)
        #expect(result.stdout.contains(" 0 corrupt, 0 missing"), "\(context): \(result.stdout)", sourceLocation: sourceLocation)
    }

    /// For failure messages: what the fake was asked, and the tail of the mirror's log.
    var diagnostics: String {
        "--- fake upstream log ---\n\(upstream.log.suffix(30).joined(separator: "\n"))\n--- mirror stderr (tail) ---\n\(mirror.stderr.suffix(3000))"
    }
}

// Short descriptions: an #expect over `env.…` or `image.…` prints its operands when it
// fails, and the default reflection would spell out every byte of the image (megabytes,
// which take Swift Testing tens of seconds to format).
extension FaultEnvironment: CustomStringConvertible {
    var description: String { "FaultEnvironment(mirror 127.0.0.1:\(port), upstream \(upstream.host), data \(dataDirectory.path))" }
}

extension FaultImage: CustomStringConvertible {
    var description: String {
        "FaultImage(manifest \(manifestDigest), config \(configDigest), layers \(layers.map { "\($0.digest) (\($0.bytes.count) B)" }))"
    }
}
