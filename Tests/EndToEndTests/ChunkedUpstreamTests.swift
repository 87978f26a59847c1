import Foundation
import OCI
import Testing

/// An upstream that sends blobs chunked, with no `Content-Length` (issue 10, item 1). The
/// mirror used to wait forever for a size that never came, with the request's task spinning
/// on a core after the client left.
extension FaultInjectionTests {
    @Test("a chunked upstream: blobs stream through (chunked or with the manifest's size), are cached verified, HEAD answers the size, and the CPU stays quiet")
    func chunkedUpstreamBlobs() async throws {
        try await FaultEnvironment.with(layerSizes: [3 << 20, 300 << 10, 100 << 10]) { env in
            for digest in env.image.blobs.keys { env.upstream.setFault(.chunked, for: digest) }
            let (big, small, third) = (env.image.layers[0], env.image.layers[1], env.image.layers[2])

            // No manifest names these blobs yet, so their size is unknown until they arrive.
            // A Range needs it: the answer waits for the download, then is exact.
            let ranged = try await FaultRequest.start(port: env.port, path: FaultEnvironment.blobPath(big.digest),
                                                      headers: [("Range", "bytes=100-199")], timeout: 20).result(timeout: .seconds(30))
            #expect(ranged.status == 206 && ranged.header("Content-Range") == "bytes 100-199/\(big.bytes.count)", "\(ranged)\n\(env.diagnostics)")
            #expect(ranged.body == Array(big.bytes[100...199]), "the range's bytes are wrong: \(ranged)")

            // A plain GET streams chunked, its end (the last chunk) sent once the digest is verified.
            let cold = try await FaultRequest.start(port: env.port, path: FaultEnvironment.blobPath(small.digest), timeout: 20)
                .result(timeout: .seconds(30))
            #expect(cold.status == 200, "cold GET of a chunked blob: \(cold)\n\(env.diagnostics)")
            #expect(cold.header("Transfer-Encoding")?.lowercased() == "chunked", "\(cold)")
            #expect(cold.body.count == small.bytes.count && cold.body.sha256 == small.digest, "the chunked body is not the blob: \(cold)")
            #expect(await env.awaitBlobFile(small.digest), "the blob was not cached\n\(env.diagnostics)")

            // Cached: HEAD carries its size.
            let head = try RawHTTP.head(port: env.port, path: FaultEnvironment.blobPath(small.digest))
            #expect(head.status == 200 && head.header("Content-Length") == String(small.bytes.count), "HEAD of the cached blob: \(head)")

            // Not cached, and the upstream's HEAD has no length either: the mirror fetches it to say.
            let coldHead = try RawHTTP.head(port: env.port, path: FaultEnvironment.blobPath(third.digest))
            #expect(coldHead.status == 200 && coldHead.header("Content-Length") == String(third.bytes.count),
                    "HEAD of an uncached chunked blob: \(coldHead)\n\(env.diagnostics)")

            // Once a cached manifest names the blob, its descriptor gives the size: the cold
            // config goes out with a Content-Length, not chunked.
            let manifest = try RawHTTP.request("GET", port: env.port, path: FaultEnvironment.manifestPath(FaultImage.tag), headers: Self.manifestAccept)
            #expect(manifest.status == 200)
            let config = try await FaultRequest.start(port: env.port, path: FaultEnvironment.blobPath(env.image.configDigest), timeout: 20)
                .result(timeout: .seconds(30))
            #expect(config.isCompleteOK && config.body == env.image.config, "cold config with a known size: \(config)")
            #expect(config.header("Transfer-Encoding") == nil, "\(config)")

            // And a real client pulls the whole image.
            let out = env.work.url.appendingPathComponent("pulled")
            let pull = try await Command.run("skopeo", [
                "copy", "--src-tls-verify=false",
                "docker://127.0.0.1:\(env.port)/\(FaultImage.repository):\(FaultImage.tag)", "oci:\(out.path):v1",
            ], timeout: .seconds(60))
            #expect(pull.succeeded, "skopeo pull through a chunked upstream: \(pull.summary)\n\(env.diagnostics)")
            for digest in env.image.blobs.keys {
                #expect(await env.awaitBlobFile(digest), "\(digest) was not cached\n\(env.diagnostics)")
                // The cold Range of `big` was asked of the upstream too (lazy pulling); this
                // one ignores Range and answered 200, which was dropped, not relayed.
                let asked = digest == big.digest ? 2 : 1
                #expect(env.upstream.count("GET", FaultEnvironment.blobPath(digest)) == asked,
                        "\(digest) was fetched \(env.upstream.count("GET", FaultEnvironment.blobPath(digest))) times\n\(env.diagnostics)")
            }
            try await env.expectConsistentStore("after chunked fills")
        }
    }

    @Test("clients that leave a chunked fill early leave no task spinning")
    func chunkedUpstreamLeavesNoSpin() async throws {
        try await FaultEnvironment.with(layerSizes: [8 << 20]) { env in
            let layer = env.image.layers[0]
            env.upstream.setFault(.chunked, for: layer.digest)
            let pid = try #require(env.mirror.serverPID)
            // Three clients that give up at once, as in the report, and one that waits.
            let leavers = (0..<3).map { _ in FaultRequest.start(port: env.port, path: FaultEnvironment.blobPath(layer.digest), timeout: 1) }
            let full = try await FaultRequest.start(port: env.port, path: FaultEnvironment.blobPath(layer.digest), timeout: 20)
                .result(timeout: .seconds(30))
            for leaver in leavers { _ = try await leaver.result(timeout: .seconds(30)) }
            #expect(full.status == 200 && full.body.sha256 == layer.digest, "\(full)\n\(env.diagnostics)")
            #expect(await env.awaitBlobFile(layer.digest))

            // Quiet now: over 2 s the server may use a sliver of CPU, not a core.
            let before = try ProcessCPU.seconds(pid)
            try await Task.sleep(for: .seconds(2))
            let used = try ProcessCPU.seconds(pid) - before
            #expect(used < 0.3, "the idle server used \(used) CPU-seconds in 2 s after its clients left\n\(env.diagnostics)")
            let health = try RawHTTP.get(port: env.port, path: "/healthz")
            #expect(health.status == 200)
        }
    }
}

/// CPU time of a process, from /proc.
enum ProcessCPU {
    /// User plus system time, in seconds.
    static func seconds(_ pid: Int32) throws -> Double {
        let text = try String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)
        // Fields after the command name (which is in parentheses and may hold spaces).
        guard let close = text.lastIndex(of: ")") else { throw E2EError("unreadable /proc/\(pid)/stat") }
        let fields = text[text.index(after: close)...].split(separator: " ")
        // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
        guard fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) else {
            throw E2EError("unreadable /proc/\(pid)/stat: \(text.prefix(200))")
        }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }
}
