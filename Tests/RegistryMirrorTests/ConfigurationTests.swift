import Foundation
import Logging
import RegistryMirror
import Testing

@Suite struct ConfigurationTests {
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

    @Test func everyShippedConfigLoads() throws {
        let files = try FileManager.default.contentsOfDirectory(atPath: Self.packageRoot + "/config").filter { $0.hasSuffix(".yaml") }
        #expect(!files.isEmpty)
        for file in files {
            let config = try MirrorConfiguration.load(file: Self.packageRoot + "/config/" + file, environment: [:])
            if file == "registry-mirror.yaml" {
                #expect(config == MirrorConfiguration(), "the commented reference file shows the defaults")
            }
        }
    }

    @Test func everyProblemIsListedWithItsKeyPath() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let file = dir.path + "/bad.yaml"
        try """
        listen: nowhere
        data_dir: /x
        lgo:
          level: info
        log:
          level: loud
        http:
          sendfile: maybe
        """.write(toFile: file, atomically: true, encoding: .utf8)
        do {
            _ = try MirrorConfiguration.load(file: file, environment: [:])
            Issue.record("a bad configuration was accepted")
        } catch {
            #expect(error.problems.count == 4)
            for key in ["listen:", "lgo.level: unknown key", "log.level:", "http.sendfile:"] {
                #expect(error.problems.contains { $0.hasPrefix(key) }, "\(key) reported")
            }
        }
    }

    @Test func environmentOverridesTheFile() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let file = dir.path + "/c.yaml"
        try "listen: 127.0.0.1:6000\ndata_dir: /from/file\n".write(toFile: file, atomically: true, encoding: .utf8)
        let config = try MirrorConfiguration.load(file: file, environment: ["REGISTRY_MIRROR_DATA_DIR": "/from/env"])
        #expect(config.listen == "127.0.0.1:6000")
        #expect(config.dataDirectory == "/from/env")
        #expect(config.serveSettings.port == 6000)
        #expect(config.serveSettings.host == "127.0.0.1")
    }

    @Test func storageCapAndIntervalParse() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let file = dir.path + "/s.yaml"
        try "storage:\n  max_size: 20GiB\n  eviction_interval: 10s\n".write(toFile: file, atomically: true, encoding: .utf8)
        let config = try MirrorConfiguration.load(file: file, environment: ["REGISTRY_MIRROR_STORAGE_MAX_SIZE": "500MiB"])
        #expect(config.maxSize == 500 << 20, "the environment overrides the file")
        #expect(config.evictionInterval == .seconds(10))
        #expect(config.serveSettings.maxBytes == 500 << 20)
        try "storage:\n  max_size: lots\n  eviction_interval: never\n".write(toFile: file, atomically: true, encoding: .utf8)
        #expect(throws: ConfigurationError.self) { _ = try MirrorConfiguration.load(file: file, environment: [:]) }
    }

    @Test(arguments: [
        ("4096", Int64(4096)), ("500MiB", 500 << 20), ("20GiB", 20 << 30), ("1.5TB", 1_500_000_000_000),
        ("2G", 2 << 30), ("10 MB", 10_000_000), ("1kib", 1024),
    ])
    func sizesParse(_ text: String, _ bytes: Int64) {
        #expect(ByteSize.parse(text) == bytes)
    }

    @Test(arguments: ["", "MiB", "-1GiB", "5 parsecs", "1e30", "99999999999TB"])
    func badSizesAreRefused(_ text: String) {
        #expect(ByteSize.parse(text) == nil)
    }
}
