import Foundation
import RegistryMirror
import Testing

/// `http.tls.*` is checked when the configuration loads: a pair that cannot serve stops the
/// start with a message naming the key, rather than failing every handshake later.
@Suite struct TLSConfigurationTests {
    /// Loads `environment` (the `REGISTRY_MIRROR_HTTP_TLS_*` variables, paths relative to `dir`).
    static func load(_ dir: TemporaryDirectory, _ settings: [String: String]) -> Result<MirrorConfiguration, ConfigurationError> {
        var environment: [String: String] = [:]
        for (key, file) in settings { environment["REGISTRY_MIRROR_HTTP_TLS_" + key] = dir.path + "/" + file }
        return Result { () throws(ConfigurationError) in try MirrorConfiguration.load(file: nil, environment: environment) }
    }

    static func problems(_ result: Result<MirrorConfiguration, ConfigurationError>) -> [String] {
        if case .failure(let error) = result { return error.problems }
        return []
    }

    static func files() throws -> TemporaryDirectory {
        let dir = try TemporaryDirectory()
        for (name, text) in [("tls.crt", StandInTLS.certificate), ("tls.key", StandInTLS.key), ("other.key", StandInTLS.otherKey),
                             ("garbage.crt", "not a certificate\n"), ("garbage.key", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")] {
            try text.write(toFile: dir.path + "/" + name, atomically: true, encoding: .utf8)
        }
        return dir
    }

    @Test func aMatchingPairLoadsAndReachesTheServeSettings() throws {
        let dir = try Self.files()
        defer { dir.remove() }
        let config = try Self.load(dir, ["CERTIFICATE": "tls.crt", "KEY": "tls.key", "CLIENT_CA": "tls.crt"]).get()
        #expect(config.tls?.certificate == dir.path + "/tls.crt")
        #expect(config.tls?.clientCA == dir.path + "/tls.crt")
        #expect(config.serveSettings.tls == config.tls)
        #expect(try MirrorConfiguration.load(file: nil, environment: [:]).tls == nil, "plain HTTP by default")
    }

    @Test func eachBadSettingIsNamed() throws {
        let dir = try Self.files()
        defer { dir.remove() }
        let cases: [([String: String], [String])] = [
            (["KEY": "tls.key"], ["http.tls.certificate: missing; http.tls.key is set without a certificate"]),
            (["CERTIFICATE": "tls.crt"], ["http.tls.key: missing; http.tls.certificate needs its private key"]),
            (["CLIENT_CA": "tls.crt"], ["http.tls.client_ca: needs http.tls.certificate and http.tls.key"]),
            (["CERTIFICATE": "absent.crt", "KEY": "absent.key"], ["http.tls.certificate: \(dir.path)/absent.crt cannot be read",
                                                                  "http.tls.key: \(dir.path)/absent.key cannot be read"]),
            (["CERTIFICATE": "garbage.crt", "KEY": "tls.key"], ["http.tls.certificate: \(dir.path)/garbage.crt is not a PEM certificate"]),
            (["CERTIFICATE": "tls.crt", "KEY": "garbage.key"], ["http.tls.key: \(dir.path)/garbage.key is not a PEM private key"]),
            (["CERTIFICATE": "tls.crt", "KEY": "tls.key", "CLIENT_CA": "garbage.crt"], ["http.tls.client_ca: \(dir.path)/garbage.crt is not a PEM certificate"]),
            (["CERTIFICATE": "tls.crt", "KEY": "other.key"], ["http.tls.key: \(dir.path)/other.key does not go with the certificate in \(dir.path)/tls.crt"]),
        ]
        for (settings, expected) in cases {
            let problems = Self.problems(Self.load(dir, settings))
            #expect(problems.count == expected.count, "\(settings): \(problems)")
            for prefix in expected {
                #expect(problems.contains { $0.hasPrefix(prefix) }, "\(settings): no problem starting \"\(prefix)\" in \(problems)")
            }
        }
    }
}
