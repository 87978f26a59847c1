import Foundation
import OCI
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `http.idle_timeout`: idle connections and stalled request heads are closed; a slow client
/// in the middle of a response is not.
@Suite("Idle timeout", .serialized)
struct IdleTimeoutTests {
    @Test("an idle keep-alive connection and a stalled request head are closed; a slow download is not cut")
    func idleConnectionsCloseSlowDownloadsFinish() async throws {
        try await PullThroughScope.run("idle") { scope in
            let upstream = try await scope.registry()
            try await scope.push(try scope.bigImage(seed: 71, layerSizes: [24 << 20]), to: upstream.host, "idle/big")
            let held = try PullThroughHTTP.upstreamImage(port: upstream.port, "idle/big", tag: "v1")
            let config = scope.unique("idle").appendingPathExtension("yaml")
            try "http:\n  idle_timeout: 1s\n".write(to: config, atomically: true, encoding: .utf8)
            let mirror = try await scope.mirror(["--upstream", "http://\(upstream.host)", "--config", config.path])
            let (pull, _) = try await scope.pull("\(mirror.host)/idle/big:v1", all: false)
            try #require(pull.succeeded, "\(pull.summary)")

            // A connection that sends nothing, and one that stops mid-head, are closed.
            for partial in ["", "GET /v2/ HTTP/1.1\r\nHost: x\r\n"] {
                let fd = try RawHTTP.connectLoopback(port: mirror.port, timeout: 10)
                defer { close(fd) }
                if !partial.isEmpty { _ = partial.withCString { send(fd, $0, strlen($0), Int32(MSG_NOSIGNAL)) } }
                let started = ContinuousClock.now
                var byte: UInt8 = 0
                let n = recv(fd, &byte, 1, 0)
                let waited = started.duration(to: .now)
                #expect(n <= 0, "the server sent data to an idle connection")
                #expect(waited < .seconds(8), "an idle connection stayed open \(waited)")
            }

            // A client that reads slower than the timeout still gets the whole blob.
            let layer = held.layers[0]
            let reader = try SlowReader(port: mirror.port, path: "/v2/idle/big/blobs/\(layer)")
            try reader.read(atLeast: 64 << 10)
            try await Task.sleep(for: .seconds(3))
            let body = try reader.readToEnd()
            #expect(body.sha256 == layer, "the slow download was cut after \(body.count) bytes")
        }
    }
}
