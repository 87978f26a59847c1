import Foundation
import Hummingbird
import HummingbirdTesting
import Logging
import RegistryMirror
import Testing

/// `/readyz` (issue 10, item 6): ready means a small write succeeds in the store and its
/// filesystem has more free space than `storage.min_free_space`. (A full disk, where the write
/// itself fails, is an end-to-end test: it needs a filesystem of its own.)
@Suite struct ReadinessTests {
    /// The application as `serve` would build it from a configuration file with `yaml` in it.
    func app(_ yaml: String, in dir: TemporaryDirectory) throws -> some ApplicationProtocol {
        let file = dir.path + "/mirror.yaml"
        try "listen: 127.0.0.1:0\ndata_dir: \(dir.path)/data\noffline: true\n\(yaml)".write(toFile: file, atomically: true, encoding: .utf8)
        let configuration = try MirrorConfiguration.load(file: file, environment: [:])
        return try buildApplication(configuration.serveSettings, logger: Logger(label: "test"))
    }

    @Test func lessFreeSpaceThanTheFloorIsNotReady() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        try await app("storage:\n  min_free_space: 1PiB\n", in: dir).test(.router) { client in
            let response = try await client.execute(uri: "/readyz", method: .get)
            let body = String(buffer: response.body)
            #expect(response.status == .serviceUnavailable, "\(body)")
            #expect(body.contains("free, below storage.min_free_space (1.0 PiB)"), "\(body)")
            // Alive all the same: only readiness depends on the disk.
            #expect(try await client.execute(uri: "/healthz", method: .get).status == .ok)
        }
    }

    @Test func enoughFreeSpaceAndAWritableStoreIsReady() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        try await app("storage:\n  min_free_space: 1MiB\n", in: dir).test(.router) { client in
            let response = try await client.execute(uri: "/readyz", method: .get)
            #expect(response.status == .ok, "\(String(buffer: response.body))")
            // The probe leaves nothing behind in the store's temp folder.
            let temp = dir.path + "/data/tmp"
            let leftovers = regularFiles(under: temp).filter { !$0.hasSuffix(".lock") }
            #expect(leftovers.isEmpty, "\(leftovers)")
        }
    }

    @Test("with the PostgreSQL index, /readyz follows the database: down while it is halted, ready again once it is back")
    func postgresIndexReadiness() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        try await withPostgres { server in
            try await server.createDatabase("ready")
            let yaml = "storage:\n  min_free_space: 1MiB\nindex:\n  backend: postgres\n  postgres:\n"
                + "    dsn: \(server.dsn(database: "ready"))\n    connect_timeout: 1s\n"
            try await app(yaml, in: dir).test(.router) { client in
                var response = try await client.execute(uri: "/readyz", method: .get)
                #expect(response.status == .ok, "\(String(buffer: response.body))")
                try await server.halt()
                try await Task.sleep(for: .milliseconds(1100))  // past the cached answer
                response = try await client.execute(uri: "/readyz", method: .get)
                let body = String(buffer: response.body)
                #expect(response.status == .serviceUnavailable && body.contains("index"), "\(body)")
                #expect(try await client.execute(uri: "/healthz", method: .get).status == .ok, "alive all the same")
                try await server.restart()
                var ready = false
                for _ in 0..<40 where !ready {
                    try await Task.sleep(for: .milliseconds(250))
                    ready = try await client.execute(uri: "/readyz", method: .get).status == .ok
                }
                #expect(ready, "ready again without a restart of the mirror")
            }
        }
    }

    @Test("with blobs in S3, /readyz follows the bucket: down while the server is stopped, ready again once it is back on its port")
    func s3Readiness() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let moto = try await MotoServer()
        defer { moto.stop() }
        try await moto.store(bucket: "ready").createBucket()
        let credentials = dir.path + "/aws-credentials"
        try "[default]\naws_access_key_id = \(MotoServer.credentials.accessKeyID)\naws_secret_access_key = \(MotoServer.credentials.secretAccessKey)\n"
            .write(toFile: credentials, atomically: true, encoding: .utf8)
        let yaml = "storage:\n  min_free_space: 1MiB\n  backend: s3\n  s3:\n    endpoint: \(moto.endpoint.absoluteString)\n"
            + "    bucket: ready\n    path_style: true\n    credentials_file: \(credentials)\n    upload_sweep: {interval: 0s}\n"
        try await app(yaml, in: dir).test(.router) { client in
            var response = try await client.execute(uri: "/readyz", method: .get)
            #expect(response.status == .ok, "\(String(buffer: response.body))")
            let port = try #require(moto.endpoint.port)
            moto.stop()
            try await Task.sleep(for: .milliseconds(1100))  // past the cached answer
            response = try await client.execute(uri: "/readyz", method: .get)
            let body = String(buffer: response.body)
            #expect(response.status == .serviceUnavailable && body.contains("S3 bucket"), "\(body)")
            #expect(try await client.execute(uri: "/healthz", method: .get).status == .ok, "alive all the same")
            // Answers are reused for a second: a probe storm does not reach the bucket.
            #expect(try await client.execute(uri: "/readyz", method: .get).status == .serviceUnavailable)
            // moto keeps its buckets in memory: the new one needs the bucket made again.
            let again = try await MotoServer(port: port)
            defer { again.stop() }
            try await again.store(bucket: "ready").createBucket()
            var ready = false
            for _ in 0..<40 where !ready {
                try await Task.sleep(for: .milliseconds(250))
                ready = try await client.execute(uri: "/readyz", method: .get).status == .ok
            }
            #expect(ready, "ready again without a restart of the mirror")
        }
    }
}
