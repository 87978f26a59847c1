import Foundation
import Logging
import OCI
import Testing
import Upstream

// inotify and the libc spelling below are Linux's, where the mirror is deployed.
#if canImport(Glibc)
import Glibc

/// Redirects to schemes other than http and https (issue 10, item 3): an upstream, or
/// anyone in the middle of an `http://` one, must not make the mirror talk gopher or dict
/// to an internal service, or read a local file.
extension FaultInjectionTests {
    @Test("redirects to gopher, dict and file URLs: 502 naming the scheme, not retried, nothing connected to or opened")
    func redirectToOtherSchemes() async throws {
        try await FaultEnvironment.with(layerSizes: [64 << 10, 64 << 10, 64 << 10]) { env in
            let trap = try ListenerTrap()
            defer { trap.stop() }
            // The file holds the blob's own bytes: read, it would even pass verification.
            let secret = env.work.url.appendingPathComponent("secret-blob")
            try Files.write(env.image.layers[2].bytes, to: secret)
            let watch = try FileOpenWatch(secret.path)
            defer { watch.stop() }

            let cases = [
                ("gopher", env.image.layers[0], "gopher://127.0.0.1:\(trap.port)/_SET%20owned%201%0D%0AQUIT%0D%0A"),
                ("dict", env.image.layers[1], "dict://127.0.0.1:\(trap.port)/info"),
                ("file", env.image.layers[2], "file://\(secret.path)"),
            ]
            for (scheme, layer, location) in cases {
                let path = FaultEnvironment.blobPath(layer.digest)
                env.upstream.setRoute(.redirect(location, status: 302), for: path)
                let response = try await FaultRequest.get(port: env.port, path: path)
                Progress.step("fault: redirect to \(scheme): client saw \(response)")
                #expect(response.status == 502, "\(scheme): \(response)\n\(env.diagnostics)")
                #expect(response.errorCodes == ["UNKNOWN"], "\(scheme): \(response)")
                let detail = String(decoding: response.body, as: UTF8.self)
                #expect(detail.contains("the \(scheme) scheme is not allowed"), "\(scheme): the error does not name the scheme: \(response)")
                #expect(env.upstream.count("GET", path) == 1,
                        "\(scheme): the fake saw \(env.upstream.count("GET", path)) GETs, expected 1 (a refused redirect is not retried)\n\(env.diagnostics)")
                let delivered = response.body == layer.bytes
                #expect(!delivered, "\(scheme): the client got the blob's bytes")
                await expectNothingCached(env, layer.digest, "redirect to \(scheme)")
            }
            let reached = trap.connections()
            #expect(reached.isEmpty, "the gopher/dict target was connected to: \(reached)\n\(env.diagnostics)")
            let opened = watch.events()
            #expect(opened.isEmpty, "the file:// target was opened or read: \(opened)\n\(env.diagnostics)")
        }
    }

    @Test("a Bearer challenge whose token realm is a gopher URL: refused, not retried, nothing connected to")
    func tokenRealmOfAnotherScheme() async throws {
        try await FaultEnvironment.with(layerSizes: [64 << 10]) { env in
            let trap = try ListenerTrap()
            defer { trap.stop() }
            let path = FaultEnvironment.blobPath(env.image.layers[0].digest)
            env.upstream.setRoute(.challenge(#"Bearer realm="gopher://127.0.0.1:\#(trap.port)/_SET%20owned%201",service="fake""#), for: path)
            let response = try await FaultRequest.get(port: env.port, path: path)
            #expect(response.status == 502, "\(response)\n\(env.diagnostics)")
            #expect(String(decoding: response.body, as: UTF8.self).contains("the gopher scheme is not allowed"), "\(response)")
            #expect(env.upstream.count("GET", path) == 1, "the challenge was retried\n\(env.diagnostics)")
            let reached = trap.connections()
            #expect(reached.isEmpty, "the realm's target was connected to: \(reached)")
        }
    }

    @Test("an https upstream that redirects to plain http: 502 naming the downgrade, not retried, the http target never reached")
    func httpsNotDowngradedToHTTP() async throws {
        _ = try TestPaths.requireMirrorBinary()
        let work = try TemporaryDirectory(prefix: "registry-mirror-e2e-downgrade")
        defer { work.remove() }
        let trap = try ListenerTrap()
        defer { trap.stop() }
        let upstream = try await TLSRedirectUpstream.start(
            in: work, path: "/v2/\(FaultImage.repository)/tags/list?n=1000",
            location: "http://127.0.0.1:\(trap.port)/v2/\(FaultImage.repository)/tags/list?n=1000")
        let config = work.url.appendingPathComponent("mirror.yaml")
        try Data("upstreams:\n  - name: up\n    url: https://127.0.0.1:\(upstream.port)\n    insecure: true\n".utf8).write(to: config)
        let mirror: MirrorProcess
        do {
            mirror = try await MirrorProcess.start(dataDirectory: work.url.appendingPathComponent("data"), logDirectory: try work.subdirectory("logs"),
                                                   extraArguments: ["--config", config.path, "--log-level", "debug"])
        } catch {
            await upstream.stop()
            throw error
        }
        let response = try await FaultRequest.get(port: mirror.port, path: "/v2/\(FaultImage.repository)/tags/list")
        let diagnostics = "--- s_server ---\n\(upstream.process.stdout)\(upstream.process.stderr)\n--- mirror stderr (tail) ---\n\(mirror.stderr.suffix(3000))"
        await mirror.stop()
        await upstream.stop()

        Progress.step("fault: https → http redirect: client saw \(response)")
        #expect(response.status == 502, "\(response)\n\(diagnostics)")
        let detail = String(decoding: response.body, as: UTF8.self)
        #expect(detail.contains("downgrades https to http"), "the error does not name the downgrade: \(response)")
        #expect(upstream.served == 1, "the https upstream answered \(upstream.served) requests, expected 1 (a refused redirect is not retried)\n\(diagnostics)")
        let reached = trap.connections()
        #expect(reached.isEmpty, "the plain-http target was connected to: \(reached)\n\(diagnostics)")
    }

    @Test("libcurl itself speaks only http and https: a gopher, dict or file URL handed to the transport fails and reaches nothing")
    func transportSpeaksOnlyHTTP() async throws {
        let work = try TemporaryDirectory(prefix: "registry-mirror-e2e-schemes")
        defer { work.remove() }
        let trap = try ListenerTrap()
        defer { trap.stop() }
        let secret = work.url.appendingPathComponent("secret")
        try Files.write(Array("not for the network\n".utf8), to: secret)
        let watch = try FileOpenWatch(secret.path)
        defer { watch.stop() }

        let transport = CurlTransport(maxConcurrent: 1)
        for text in ["gopher://127.0.0.1:\(trap.port)/_hello", "dict://127.0.0.1:\(trap.port)/info", "file://\(secret.path)"] {
            let url = try #require(URL(string: text))
            let sink = DiscardingSink()
            do {
                let head = try await transport.perform(HTTPExchange(method: "GET", url: url), limits: TransferLimits(), sink: sink)
                Issue.record("\(text): the transfer succeeded (status \(head.status), \(sink.received) body bytes)")
            } catch let error as TransportError {
                #expect(error.message.contains("\(url.scheme!) URL not fetched: the upstream client speaks only http and https"),
                        "\(text): unexpected failure: \(error.message)")
            }
            #expect(sink.received == 0, "\(text): \(sink.received) body bytes came back")
        }
        let reached = trap.connections()
        #expect(reached.isEmpty, "the gopher/dict target was connected to: \(reached)")
        let opened = watch.events()
        #expect(opened.isEmpty, "the file:// target was opened or read: \(opened)")
    }
}

/// An https upstream that answers one path with a redirect: `openssl s_server -HTTP`, which
/// serves files that hold whole HTTP responses (the fake upstream speaks only plain HTTP).
struct TLSRedirectUpstream {
    let process: ChildProcess
    let port: Int

    /// Serves `307 Location: location` for `path` (which must hold no `:` or `..`; s_server refuses those).
    static func start(in work: TemporaryDirectory, path: String, location: String) async throws -> TLSRedirectUpstream {
        _ = try TestPaths.executable("openssl")
        let signer = try await TokenAuthSigner.make(in: work.url)
        let www = try work.subdirectory("www")
        let file = www.appendingPathComponent(String(path.dropFirst()))
        try FileManager.default.createDirectory(at: file.deletingLastPathComponent(), withIntermediateDirectories: true)
        try Data("HTTP/1.1 307 Temporary Redirect\r\nLocation: \(location)\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".utf8).write(to: file)
        // s_server serves relative to its working directory; ChildProcess has none to give.
        let process = try ChildProcess(
            name: "tls-redirect-upstream", program: "sh",
            arguments: ["-c", #"cd "$0" && exec openssl s_server -accept 127.0.0.1:0 -cert "$1" -key "$2" -HTTP"#,
                        www.path, signer.certificatePath, signer.keyPath],
            logDirectory: try work.subdirectory("tls-logs"))
        var port: Int?
        do {
            try await waitUntil("openssl s_server to print its ACCEPT line", process: process) {
                port = process.stdout.split(separator: "\n").first { $0.hasPrefix("ACCEPT 127.0.0.1:") }
                    .flatMap { Int($0.dropFirst("ACCEPT 127.0.0.1:".count)) }
                return port != nil
            }
        } catch {
            await process.stop()
            throw error
        }
        return TLSRedirectUpstream(process: process, port: port!)
    }

    /// How many requests s_server answered from a file (it notes each on stderr).
    var served: Int { (process.stdout + "\n" + process.stderr).split(separator: "\n").filter { $0.hasPrefix("FILE:") }.count }

    func stop() async { await process.stop() }
}

/// Counts body bytes and keeps none.
final class DiscardingSink: TransferSink, @unchecked Sendable {
    // Written by the transfer thread, read after `perform` returns.
    private(set) var received = 0
    func head(_ head: ResponseHead) -> Bool { true }
    func body(_ chunk: UnsafeRawBufferPointer) throws { received += chunk.count }
}

/// A TCP listener on 127.0.0.1 that never accepts while the test runs: the kernel completes
/// any connection into its backlog and buffers what the peer sends, so afterwards
/// `connections()` tells whether anything connected, and what it sent. No thread, no waiting.
final class ListenerTrap: @unchecked Sendable {
    let port: Int
    private let fd: Int32

    init() throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw E2EError("trap: socket() failed: errno \(errno)") }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && listen(fd, 16) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        guard bound else {
            let code = errno
            close(fd)
            throw E2EError("trap: bind/listen on 127.0.0.1:0 failed: errno \(code)")
        }
        self.fd = fd
        port = Int(UInt16(bigEndian: addr.sin_port))
    }

    /// Every connection that reached the backlog, as the bytes it had sent so far.
    func connections() -> [String] {
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        var seen: [String] = []
        while true {
            let client = accept(fd, nil, nil)
            guard client >= 0 else { break }
            var buffer = [UInt8](repeating: 0, count: 4096)
            let n = buffer.withUnsafeMutableBytes { recv(client, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            seen.append("a connection that sent \(max(n, 0)) bytes: \(String(decoding: buffer.prefix(max(n, 0)), as: UTF8.self).debugDescription)")
            close(client)
        }
        return seen
    }

    func stop() { close(fd) }
}

/// Records every open and read of one file (inotify), so a test can tell that nothing
/// touched it. Linux only, like the mirror's deployment.
final class FileOpenWatch: @unchecked Sendable {
    private let fd: Int32
    let path: String

    init(_ path: String) throws {
        self.path = path
        fd = inotify_init1(Int32(IN_NONBLOCK | IN_CLOEXEC))
        guard fd >= 0 else { throw E2EError("inotify_init1 failed: errno \(errno)") }
        guard inotify_add_watch(fd, path, UInt32(IN_OPEN | IN_ACCESS)) >= 0 else {
            let code = errno
            close(fd)
            throw E2EError("inotify_add_watch \(path) failed: errno \(code)")
        }
    }

    /// "open" and "read" for each event since the watch began.
    func events() -> [String] {
        var buffer = [UInt8](repeating: 0, count: 64 << 10)
        var seen: [String] = []
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            guard n > 0 else { break }
            var offset = 0
            while offset + MemoryLayout<inotify_event>.size <= n {
                let event = buffer.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: inotify_event.self) }
                seen.append(event.mask & UInt32(IN_OPEN) != 0 ? "open \(path)" : "read \(path)")
                offset += MemoryLayout<inotify_event>.size + Int(event.len)
            }
        }
        return seen
    }

    func stop() { close(fd) }
}
#endif
