import ContentStore
import Foundation

/// Where an S3-compatible store keeps its blobs: endpoint, region, bucket, key prefix, and how
/// the bucket is addressed.
///
/// Only the plain S3 REST API is spoken, so AWS S3, MinIO, Ceph RGW (and the `moto` server the
/// tests run) all serve as the far end.
public struct S3Location: Sendable, Equatable {
    /// `https://s3.us-east-1.amazonaws.com`, `http://minio:9000`: scheme, host and port only.
    public var endpoint: URL
    /// The SigV4 signing region (`us-east-1` for most S3-compatible servers).
    public var region: String
    public var bucket: String
    /// Keys start with this (no leading or trailing `/`; empty for the bucket's root).
    public var prefix: String
    /// `endpoint/bucket/key` (MinIO, Ceph, moto) rather than `bucket.endpoint/key` (AWS).
    public var pathStyle: Bool

    public init(endpoint: URL, region: String, bucket: String, prefix: String = "", pathStyle: Bool = true) {
        self.endpoint = endpoint
        self.region = region
        self.bucket = bucket
        self.prefix = prefix.split(separator: "/").joined(separator: "/")
        self.pathStyle = pathStyle
    }

    /// The URL of an object (`key` nil: the bucket itself) with a query whose parameters are
    /// sorted and encoded as SigV4's canonical query string wants them, because libcurl signs
    /// the query exactly as it appears in the URL.
    func url(key: String?, query: [(String, String)]) -> String {
        let (scheme, authority, path) = address(key: key)
        return "\(scheme)://\(authority)\(path)" + Self.canonicalQuery(query)
    }

    /// Scheme, authority (`host[:port]`, as the `Host` header says it) and encoded path of an
    /// object (`key` nil: the bucket), the parts a signature covers.
    func address(key: String?) -> (scheme: String, authority: String, path: String) {
        let scheme = endpoint.scheme ?? "https"
        let host = endpoint.host ?? ""
        let port = endpoint.port.map { ":\($0)" } ?? ""
        var path = ""
        let authority: String
        if pathStyle {
            authority = host + port
            path = "/" + Self.encode(bucket, keepSlash: false)
        } else {
            authority = bucket + "." + host + port
        }
        path += "/" + (key.map { Self.encode($0, keepSlash: true) } ?? "")
        return (scheme, authority, path)
    }

    /// `?a=1&b=2`, sorted and encoded as SigV4's canonical query string wants them; empty for none.
    static func canonicalQuery(_ query: [(String, String)]) -> String {
        let sorted = query.sorted { $0.0 < $1.0 }
        let text = sorted.map { encode($0.0, keepSlash: false) + "=" + encode($0.1, keepSlash: false) }.joined(separator: "&")
        return text.isEmpty ? "" : "?" + text
    }

    /// The key of a blob: `<prefix>/blobs/<algorithm>/<hex>`.
    func key(ofBlobNamed name: String) -> String { blobsPrefix + name }

    /// What every blob key starts with.
    var blobsPrefix: String { (prefix.isEmpty ? "" : prefix + "/") + "blobs/" }

    /// SigV4's URI encoding: everything but unreserved characters as `%XX` (and `/` kept in paths).
    static func encode(_ text: String, keepSlash: Bool) -> String {
        var out = ""
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                 UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."), UInt8(ascii: "~"):
                out.unicodeScalars.append(UnicodeScalar(byte))
            case UInt8(ascii: "/") where keepSlash:
                out.append("/")
            default:
                out += String(format: "%%%02X", byte)
            }
        }
        return out
    }
}

/// An access key pair (and a session token for temporary credentials) to sign requests with.
public struct S3Credentials: Sendable, Equatable {
    public var accessKeyID: String
    public var secretAccessKey: String
    public var sessionToken: String?

    public init(accessKeyID: String, secretAccessKey: String, sessionToken: String? = nil) {
        self.accessKeyID = accessKeyID
        self.secretAccessKey = secretAccessKey
        self.sessionToken = sessionToken
    }

    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and optionally `AWS_SESSION_TOKEN`; nil
    /// unless both of the first two are set.
    public static func fromEnvironment(_ environment: [String: String] = ProcessInfo.processInfo.environment) -> S3Credentials? {
        guard let id = environment["AWS_ACCESS_KEY_ID"], !id.isEmpty,
              let secret = environment["AWS_SECRET_ACCESS_KEY"], !secret.isEmpty else { return nil }
        let token = environment["AWS_SESSION_TOKEN"].flatMap { $0.isEmpty ? nil : $0 }
        return S3Credentials(accessKeyID: id, secretAccessKey: secret, sessionToken: token)
    }

    /// Reads a file in the AWS shared-credentials format (`[profile]` sections of
    /// `aws_access_key_id`, `aws_secret_access_key`, `aws_session_token`), the form operators
    /// and Kubernetes secrets already have.
    public static func load(file path: String, profile: String = "default") throws(StoreError) -> S3Credentials {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw StoreError(.io, "cannot read the S3 credentials file \(path)")
        }
        return try parse(text, profile: profile, source: path)
    }

    static func parse(_ text: String, profile: String, source: String) throws(StoreError) -> S3Credentials {
        var section: String?
        var values: [String: String] = [:]
        for raw in text.split(whereSeparator: \.isNewline) {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") || line.hasPrefix(";") { continue }
            if line.hasPrefix("["), line.hasSuffix("]") {
                section = line.dropFirst().dropLast().trimmingCharacters(in: .whitespaces)
                continue
            }
            // A file without sections holds one profile.
            guard section == nil || section == profile, let equals = line.firstIndex(of: "=") else { continue }
            let name = line[..<equals].trimmingCharacters(in: .whitespaces).lowercased()
            values[name] = line[line.index(after: equals)...].trimmingCharacters(in: .whitespaces)
        }
        guard let id = values["aws_access_key_id"], let secret = values["aws_secret_access_key"], !id.isEmpty, !secret.isEmpty else {
            throw StoreError(.io, "\(source) has no aws_access_key_id and aws_secret_access_key for profile \(profile)")
        }
        return S3Credentials(accessKeyID: id, secretAccessKey: secret, sessionToken: values["aws_session_token"])
    }
}
