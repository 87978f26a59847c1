import Foundation
import PostgresTestServer
@testable import S3Store

/// A real S3 protocol peer for the tests: `moto_server` (PyPI `moto[server]`) on 127.0.0.1 at a
/// free port, stopped when the test ends. `scripts/test.sh` installs it into
/// `.build/venv-moto`; one on PATH serves too. A missing server is a failure, never a skip.
final class MotoServer: @unchecked Sendable {
    let process: Process
    let endpoint: URL
    static let credentials = S3Credentials(accessKeyID: "test-access-key", secretAccessKey: "test-secret-key")

    static let packageRoot = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static func binary() throws -> String {
        let venv = packageRoot.appendingPathComponent(".build/venv-moto/bin/moto_server").path
        if FileManager.default.isExecutableFile(atPath: venv) { return venv }
        for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":") {
            let path = "\(dir)/moto_server"
            if FileManager.default.isExecutableFile(atPath: path) { return path }
        }
        throw MotoError("moto_server not found in \(venv) or on PATH; run scripts/test.sh, which installs moto[server]")
    }

    /// - Parameter environment: added to moto's (`INITIAL_NO_AUTH_ACTION_COUNT` turns on its
    ///   signature checks after that many requests; the readiness probe here is one).
    ///   `port`: where to listen (a restart on the port of one stopped); nil: a free one.
    init(port: Int? = nil, environment: [String: String] = [:]) async throws {
        let port = try port ?? Self.freePort()
        process = Process()
        process.executableURL = URL(fileURLWithPath: try Self.binary())
        process.arguments = ["-H", "127.0.0.1", "-p", String(port)]
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        endpoint = URL(string: "http://127.0.0.1:\(port)")!
        // Up when it answers: creating a bucket is the first thing every test does anyway.
        let deadline = ContinuousClock.now + .seconds(30)
        while true {
            do {
                try await store(bucket: "probe").createBucket()
                return
            } catch {
                guard ContinuousClock.now < deadline, process.isRunning else {
                    stop()
                    throw MotoError("moto_server did not answer on port \(port) within 30 s: \(error)")
                }
                try await Task.sleep(for: .milliseconds(200))
            }
        }
    }

    deinit { stop() }

    /// SIGKILL: a child of the test process inherits its blocked signals, SIGTERM among them.
    func stop() {
        guard process.isRunning else { return }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    /// Makes an IAM user allowed `s3:*` and answers its access key: with
    /// `INITIAL_NO_AUTH_ACTION_COUNT` at 4 (the start-up probe, then these three calls), every
    /// later request must carry a valid signature of that key.
    func signingUser() throws -> S3Credentials {
        func iam(_ form: [String]) throws -> String {
            let output = Pipe()
            let curl = Process()
            curl.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
            curl.arguments = ["-s", "--aws-sigv4", "aws:amz:us-east-1:iam", "-u", "setup:setup", "-X", "POST", endpoint.absoluteString + "/"]
                + (form + ["Version=2010-05-08"]).flatMap { ["--data-urlencode", $0] }
            curl.standardOutput = output
            try curl.run()
            let data = output.fileHandleForReading.readDataToEndOfFile()
            curl.waitUntilExit()
            return String(decoding: data, as: UTF8.self)
        }
        _ = try iam(["Action=CreateUser", "UserName=mirror"])
        _ = try iam(["Action=PutUserPolicy", "UserName=mirror", "PolicyName=s3",
                     #"PolicyDocument={"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}"#])
        let key = try iam(["Action=CreateAccessKey", "UserName=mirror"])
        guard let id = S3XML.value("AccessKeyId", in: key), let secret = S3XML.value("SecretAccessKey", in: key) else {
            throw MotoError("moto made no access key: \(key)")
        }
        return S3Credentials(accessKeyID: id, secretAccessKey: secret)
    }

    /// A store on `bucket` (path-style, as MinIO and moto want), keys under `prefix`.
    func store(bucket: String, prefix: String = "", partSize: Int = 8 << 20) -> S3Store {
        S3Store(location: S3Location(endpoint: endpoint, region: "us-east-1", bucket: bucket, prefix: prefix, pathStyle: true),
                credentials: Self.credentials, partSize: partSize)
    }

    static func freePort() throws -> Int { try LoopbackPort.free() }
}

struct MotoError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
