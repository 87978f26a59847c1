import Foundation
import OCI
import Testing

/// Issue 14, item 1: the mirror serving HTTPS itself, in front of a real docker-registry, with
/// a CA and certificates openssl makes here; skopeo and curl as the clients, verification on.
@Suite("TLS in the process", .serialized)
struct TLSEndToEndTests {
    /// A private PKI in one directory: `ca` (trusted), `wrong-ca` (trusted by nobody),
    /// `client-ca`; a server certificate for IP:127.0.0.1 and DNS:localhost signed by `ca`;
    /// `client` (signed by `client-ca`) and `stranger` (signed by `wrong-ca`) client certificates.
    struct PKI {
        let dir: URL

        func path(_ name: String) -> String { dir.appendingPathComponent(name).path }

        static func make(in dir: URL) async throws -> PKI {
            try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
            let pki = PKI(dir: dir)
            try "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n".write(toFile: pki.path("server.ext"), atomically: true, encoding: .utf8)
            try "extendedKeyUsage=clientAuth\n".write(toFile: pki.path("client.ext"), atomically: true, encoding: .utf8)
            for ca in ["ca", "wrong-ca", "client-ca"] {
                try await Command.check("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                                                    "-keyout", pki.path("\(ca).key"), "-out", pki.path("\(ca).crt"), "-days", "2",
                                                    "-subj", "/CN=registry-mirror e2e \(ca)"])
            }
            for name in ["server", "client", "stranger"] {
                try await Command.check("openssl", ["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                                                    "-keyout", pki.path("\(name).key"), "-out", pki.path("\(name).csr"), "-subj", "/CN=\(name)"])
            }
            try await pki.issue("server", by: "ca", serial: 1001, days: 1, to: "server.crt")
            try await pki.issue("client", by: "client-ca", serial: 2001, days: 1, to: "client.crt")
            try await pki.issue("stranger", by: "wrong-ca", serial: 3001, days: 1, to: "stranger.crt")
            return pki
        }

        /// Signs `name`.csr with `ca`; server certificates get the server's names.
        func issue(_ name: String, by ca: String, serial: Int, days: Int, to file: String) async throws {
            try await Command.check("openssl", ["x509", "-req", "-in", path("\(name).csr"), "-CA", path("\(ca).crt"), "-CAkey", path("\(ca).key"),
                                                "-set_serial", String(serial), "-days", String(days),
                                                "-extfile", path(ca == "client-ca" ? "client.ext" : "server.ext"), "-out", path(file)])
        }

        /// Replaces `file` by `replacement` in one rename, as a renewal tool does.
        func replace(_ file: String, with replacement: String) throws {
            guard rename(path(replacement), path(file)) == 0 else { throw E2EError("rename \(replacement) → \(file): errno \(errno)") }
        }

        /// `serial=…` of a certificate file.
        func serial(of file: String) async throws -> String {
            try await Command.check("openssl", ["x509", "-noout", "-serial", "-in", path(file)]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        }

        /// A containers-style certificate directory (skopeo `--cert-dir`, /etc/containers/certs.d/HOST:PORT):
        /// `ca.crt` from `ca`, and `client.cert`/`client.key` when a client certificate is given.
        func certDirectory(_ dir: URL, ca: String, client: String? = nil) throws -> URL {
            try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
            try FileManager.default.copyItem(atPath: path("\(ca).crt"), toPath: dir.appendingPathComponent("ca.crt").path)
            if let client {
                try FileManager.default.copyItem(atPath: path("\(client).crt"), toPath: dir.appendingPathComponent("client.cert").path)
                try FileManager.default.copyItem(atPath: path("\(client).key"), toPath: dir.appendingPathComponent("client.key").path)
            }
            return dir
        }
    }

    /// `curl -sS` with a time limit; `-w` output goes to stdout after the body (use `-o`).
    static func curl(_ arguments: [String]) async throws -> CommandResult {
        try await Command.run("curl", ["-sS", "--max-time", "60"] + arguments)
    }

    /// `serial=…` of the certificate the mirror serves a new connection now.
    static func servedSerial(_ mirror: MirrorProcess, _ pki: PKI) async throws -> String {
        let result = try await Command.run("sh", ["-c", "openssl s_client -connect 127.0.0.1:\(mirror.port) -servername localhost -CAfile '\(pki.path("ca.crt"))' </dev/null 2>/dev/null | openssl x509 -noout -serial"])
        return result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// A mirror with `http.tls.*` from `pki` over `upstream`, up once `/healthz` answers over TLS.
    static func startMirror(_ scope: PullThroughScope, upstream: DistributionRegistry, pki: PKI, clientCA: Bool = false) async throws -> MirrorProcess {
        var environment = ["REGISTRY_MIRROR_HTTP_TLS_CERTIFICATE": pki.path("server.crt"), "REGISTRY_MIRROR_HTTP_TLS_KEY": pki.path("server.key")]
        if clientCA { environment["REGISTRY_MIRROR_HTTP_TLS_CLIENT_CA"] = pki.path("client-ca.crt") }
        let mirror = try await MirrorProcess.start(
            dataDirectory: scope.unique("data"), logDirectory: scope.unique("mirror-logs"),
            extraArguments: ["--upstream", "http://\(upstream.host)", "--log-level", "debug"], environment: environment, tls: true)
        let client = ["--cacert", pki.path("ca.crt")] + (clientCA ? ["--cert", pki.path("client.crt"), "--key", pki.path("client.key")] : [])
        let deadline = ContinuousClock.now + .seconds(30)
        while true {
            let probe = try await curl(client + ["-o", "/dev/null", "-w", "%{http_code}", "https://127.0.0.1:\(mirror.port)/healthz"])
            if probe.stdout == "200" { break }
            guard ContinuousClock.now < deadline else {
                await mirror.stop()
                throw E2EError("the TLS mirror did not answer /healthz: \(probe.summary)\n\(mirror.stderr.suffix(3000))")
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        Progress.step("tls: mirror on https://\(mirror.host)\(clientCA ? " with a client CA" : "")")
        return mirror
    }

    /// The size the upstream gives a blob (HEAD).
    static func size(_ upstream: DistributionRegistry, _ repository: String, _ digest: Digest) throws -> Int {
        let head = try RawHTTP.request("HEAD", port: upstream.port, path: "/v2/\(repository)/blobs/\(digest)")
        return try #require(head.header("Content-Length").flatMap { Int($0) })
    }

    /// The highest resident set size of `pid` so far (VmHWM), in bytes.
    static func peakRSS(_ pid: Int32) throws -> Int {
        let status = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
        let line = try #require(status.split(separator: "\n").first { $0.hasPrefix("VmHWM:") })
        return try #require(Int(line.split(separator: " ", omittingEmptySubsequences: true)[1])) * 1024
    }

    @Test("skopeo and podman pull over TLS with verification on; a wrong CA and TLS 1.1 are refused; ALPN picks HTTP/2 or HTTP/1.1; a 24 MiB blob arrives whole, and 8 readers of it keep memory flat")
    func pullOverTLS() async throws {
        try await PullThroughScope.run("tls-pull") { scope in
            let upstream = try await scope.registry()
            let image = try scope.bigImage(seed: 1401, layerSizes: [24 << 20, 300_000])
            try await scope.push(image, to: upstream.host, "tls/app")
            let expected = try PullThroughHTTP.upstreamImage(port: upstream.port, "tls/app", tag: "v1")
            let pki = try await PKI.make(in: scope.unique("pki"))
            let mirror = try await Self.startMirror(scope, upstream: upstream, pki: pki)
            try await mirror.stopping { mirror in
                let base = "https://127.0.0.1:\(mirror.port)"
                let certs = try pki.certDirectory(scope.unique("certs"), ca: "ca")
                let out = scope.unique("pulled")
                let pull = try await Command.run("skopeo", ["copy", "--all", "--src-tls-verify=true", "--src-cert-dir", certs.path,
                                                            "docker://127.0.0.1:\(mirror.port)/tls/app:v1", "oci:\(out.path):v1"])
                #expect(pull.succeeded, "\(pull.summary)")
                #expect(try PullThroughLayout.root(out) == expected.rootDigest)
                // podman, with the directory laid out as /etc/containers/certs.d/HOST:PORT would be.
                let podman = try PodmanClient(scope.work)
                let reference = "127.0.0.1:\(mirror.port)/tls/app:v1"
                let podmanPull = try await podman.run(["pull", "--tls-verify=true", "--cert-dir", certs.path, reference])
                #expect(podmanPull.succeeded, "\(podmanPull.summary)")
                let digest = try await podman.run(["image", "inspect", "--format", "{{.Digest}}", reference])
                #expect(digest.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == expected.rootDigest.description, "\(digest.summary)")

                // Refused: a CA that did not sign the certificate, for skopeo and curl alike; TLS 1.1.
                let wrong = try pki.certDirectory(scope.unique("wrong-certs"), ca: "wrong-ca")
                let refused = try await Command.run("skopeo", ["inspect", "--raw", "--tls-verify=true", "--cert-dir", wrong.path,
                                                               "docker://127.0.0.1:\(mirror.port)/tls/app:v1"])
                #expect(!refused.succeeded && refused.stderr.contains("certificate"), "\(refused.summary)")
                let curlWrong = try await Self.curl(["--cacert", pki.path("wrong-ca.crt"), "\(base)/v2/"])
                #expect(curlWrong.status == 60, "curl with the wrong CA: \(curlWrong.summary)")
                let old = try await Self.curl(["--cacert", pki.path("ca.crt"), "--tls-max", "1.1", "\(base)/v2/"])
                #expect(old.status == 35, "TLS 1.1: \(old.summary)")
                let tls12 = try await Self.curl(["--cacert", pki.path("ca.crt"), "--tlsv1.2", "--tls-max", "1.2", "-o", "/dev/null", "-w", "%{http_code}", "\(base)/v2/"])
                #expect(tls12.stdout == "200", "TLS 1.2: \(tls12.summary)")
                // ALPN: HTTP/2 for a client that offers it, HTTP/1.1 for one that does not.
                for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
                    let negotiated = try await Self.curl(["--cacert", pki.path("ca.crt"), flag, "-o", "/dev/null", "-w", "%{http_code} %{http_version}", "\(base)/v2/"])
                    #expect(negotiated.stdout == "200 \(version)", "\(flag): \(negotiated.summary)")
                }

                // The big layer (as skopeo pushed it, compressed), whole, through the buffered path,
                // over HTTP/2 and over HTTP/1.1.
                let layer = try #require(try expected.layers.max { try Self.size(upstream, "tls/app", $0) < Self.size(upstream, "tls/app", $1) })
                var bytes: [UInt8] = []
                for flag in ["--http2", "--http1.1"] {
                    let file = scope.unique("layer")
                    let get = try await Self.curl(["--cacert", pki.path("ca.crt"), flag, "-o", file.path, "-w", "%{http_code}", "\(base)/v2/tls/app/blobs/\(layer)"])
                    #expect(get.stdout == "200", "\(flag): \(get.summary)")
                    bytes = try Files.read(file)
                    #expect(bytes.sha256 == layer, "\(flag): the blob over TLS does not match its digest")
                }
                #expect(bytes.count > 20 << 20, "random bytes do not compress: \(bytes.count)")

                // Eight readers at once, half on HTTP/2: without write-completion backpressure each
                // held most of the blob in memory (a 256 MiB blob: 2 GB peak for eight).
                let pid = try #require(mirror.serverPID)
                let before = try Self.peakRSS(pid)
                let results = try await withThrowingTaskGroup(of: CommandResult.self) { group in
                    for reader in 0..<8 {
                        group.addTask {
                            try await Self.curl(["--cacert", pki.path("ca.crt"), reader % 2 == 0 ? "--http2" : "--http1.1",
                                                 "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
                                                 "\(base)/v2/tls/app/blobs/\(layer)"])
                        }
                    }
                    return try await group.reduce(into: []) { $0.append($1) }
                }
                for result in results { #expect(result.stdout == "200 \(bytes.count)", "\(result.summary)") }
                let growth = try Self.peakRSS(pid) - before
                Progress.step("tls: 8 readers of a \(bytes.count >> 20) MiB blob raised peak RSS by \(growth >> 20) MiB (from \(before >> 20) MiB)")
                #expect(growth < 48 << 20, "peak RSS grew by \(growth >> 20) MiB with 8 TLS readers of a \(bytes.count >> 20) MiB blob")
            }
        }
    }

    @Test("a renewed certificate reaches new connections within seconds, no restart, a download in progress unharmed; a pair that does not load is logged and the old one kept")
    func renewedCertificateIsServed() async throws {
        try await PullThroughScope.run("tls-renewal") { scope in
            let upstream = try await scope.registry()
            let image = try scope.bigImage(seed: 1402, layerSizes: [8 << 20])
            try await scope.push(image, to: upstream.host, "tls/renew")
            let layer = try #require(try PullThroughHTTP.upstreamImage(port: upstream.port, "tls/renew", tag: "v1").layers.first)
            let pki = try await PKI.make(in: scope.unique("pki"))
            let mirror = try await Self.startMirror(scope, upstream: upstream, pki: pki)
            try await mirror.stopping { mirror in
                let ca = ["--cacert", pki.path("ca.crt")]
                let blob = "https://127.0.0.1:\(mirror.port)/v2/tls/renew/blobs/\(layer)"
                let warm = try await Self.curl(ca + ["-o", "/dev/null", "-w", "%{http_code}", blob])
                #expect(warm.stdout == "200", "\(warm.summary)")
                let pid = try #require(mirror.serverPID)
                let first = try await pki.serial(of: "server.crt")
                #expect(try await Self.servedSerial(mirror, pki) == first)

                // A download that spans the renewal: about 4 s at 2 MB/s.
                let clock = ContinuousClock()
                let start = clock.now
                let file = scope.unique("slow")
                async let slow = Self.curl(ca + ["--limit-rate", "2M", "-o", file.path, "-w", "%{http_code} %{time_total}", blob])
                try await Task.sleep(for: .seconds(1))
                try await pki.issue("server", by: "ca", serial: 1002, days: 2, to: "server.crt.new")
                let renewed = try await pki.serial(of: "server.crt.new")
                try pki.replace("server.crt", with: "server.crt.new")
                var served = ""
                for _ in 0..<40 where served != renewed {
                    try await Task.sleep(for: .milliseconds(250))
                    served = try await Self.servedSerial(mirror, pki)
                }
                let seenAfter = clock.now - start
                #expect(served == renewed && renewed != first, "after the renewal a new connection got \(served); renewed \(renewed), first \(first)")
                let finished = try await slow
                let parts = finished.stdout.split(separator: " ")
                #expect(parts.first == "200", "\(finished.summary)")
                #expect(try Files.read(file).sha256 == layer, "the download across the renewal is not whole")
                let took = parts.count == 2 ? Double(parts[1]) ?? 0 : 0
                #expect(took > Double(seenAfter.components.seconds), "the download (\(took) s) should still have run when the new certificate was seen (\(seenAfter))")
                #expect(mirror.serverPID == pid, "the mirror was restarted")
                let pull = try await Command.run("skopeo", ["inspect", "--raw", "--tls-verify=true", "--cert-dir", try pki.certDirectory(scope.unique("certs"), ca: "ca").path,
                                                            "docker://127.0.0.1:\(mirror.port)/tls/renew:v1"])
                #expect(pull.succeeded, "\(pull.summary)")

                // A certificate for another key: logged, and the renewed one still served.
                try await pki.issue("stranger", by: "ca", serial: 1003, days: 2, to: "server.crt.bad")
                try pki.replace("server.crt", with: "server.crt.bad")
                try await Task.sleep(for: .milliseconds(1500))
                _ = try await Self.servedSerial(mirror, pki)  // a connection after the check interval notices the change
                try await Task.sleep(for: .milliseconds(300))
                #expect(try await Self.servedSerial(mirror, pki) == renewed)
                #expect(mirror.stderr.contains("TLS files changed but do not load"), "\(mirror.stderr.suffix(2000))")
                let still = try await Self.curl(ca + ["-o", "/dev/null", "-w", "%{http_code}", "https://127.0.0.1:\(mirror.port)/v2/"])
                #expect(still.stdout == "200", "\(still.summary)")
            }
        }
    }

    @Test("with a client CA, a client without a certificate or with one another CA signed is refused; skopeo and curl with one pull")
    func mutualTLS() async throws {
        try await PullThroughScope.run("tls-mutual") { scope in
            let upstream = try await scope.registry()
            try await scope.push(try scope.singleImage(seed: 1403), to: upstream.host, "tls/mutual")
            let expected = try PullThroughHTTP.upstreamImage(port: upstream.port, "tls/mutual", tag: "v1")
            let pki = try await PKI.make(in: scope.unique("pki"))
            let mirror = try await Self.startMirror(scope, upstream: upstream, pki: pki, clientCA: true)
            try await mirror.stopping { mirror in
                let url = "https://127.0.0.1:\(mirror.port)/v2/"
                let ca = ["--cacert", pki.path("ca.crt"), "-o", "/dev/null", "-w", "%{http_code}"]
                let anonymous = try await Self.curl(ca + [url])
                #expect(anonymous.status != 0 && anonymous.stdout != "200", "no client certificate: \(anonymous.summary)")
                let stranger = try await Self.curl(ca + ["--cert", pki.path("stranger.crt"), "--key", pki.path("stranger.key"), url])
                #expect(stranger.status != 0 && stranger.stdout != "200", "a certificate another CA signed: \(stranger.summary)")
                let client = try await Self.curl(ca + ["--cert", pki.path("client.crt"), "--key", pki.path("client.key"), url])
                #expect(client.stdout == "200", "\(client.summary)")

                let out = scope.unique("pulled")
                let bare = try pki.certDirectory(scope.unique("bare-certs"), ca: "ca")
                let refused = try await Command.run("skopeo", ["copy", "--all", "--src-tls-verify=true", "--src-cert-dir", bare.path,
                                                               "docker://127.0.0.1:\(mirror.port)/tls/mutual:v1", "oci:\(scope.unique("refused").path):v1"])
                #expect(!refused.succeeded, "skopeo without a client certificate pulled: \(refused.summary)")
                let certs = try pki.certDirectory(scope.unique("certs"), ca: "ca", client: "client")
                let pull = try await Command.run("skopeo", ["copy", "--all", "--src-tls-verify=true", "--src-cert-dir", certs.path,
                                                            "docker://127.0.0.1:\(mirror.port)/tls/mutual:v1", "oci:\(out.path):v1"])
                #expect(pull.succeeded, "\(pull.summary)")
                #expect(try PullThroughLayout.root(out) == expected.rootDigest)
            }
        }
    }
}
