/// A content digest, `algorithm:hex`, parsed with the OCI grammar.
///
/// Only the algorithms the OCI image spec registers are accepted (sha256, sha512),
/// with lowercase hex of the exact length. Anything else is not a digest here: a
/// request carrying it is rejected at the edge and never reaches a store or an upstream.
public struct Digest: Hashable, Sendable, Comparable, CustomStringConvertible {
    /// A registered digest algorithm.
    public enum Algorithm: String, Sendable, CaseIterable {
        case sha256
        case sha512

        /// Length of the hex-encoded value.
        public var hexLength: Int {
            switch self {
            case .sha256: return 64
            case .sha512: return 128
            }
        }
    }

    public let algorithm: Algorithm
    /// Lowercase hex of the hash value.
    public let hex: String

    /// Parses `sha256:<64 lowercase hex>` or `sha512:<128 lowercase hex>`.
    public init(parsing text: some StringProtocol) throws(OCIError) {
        guard let colon = text.firstIndex(of: ":") else {
            throw OCIError(.invalidDigest, "digest has no algorithm: \(text.prefix(200))")
        }
        let name = text[..<colon]
        let value = text[text.index(after: colon)...]
        guard let algorithm = Algorithm(rawValue: String(name)) else {
            throw OCIError(.invalidDigest, "unsupported digest algorithm: \(name.prefix(64))")
        }
        guard value.utf8.count == algorithm.hexLength, value.utf8.allSatisfy(Self.isLowerHex) else {
            throw OCIError(.invalidDigest, "digest value must be \(algorithm.hexLength) lowercase hex characters")
        }
        self.algorithm = algorithm
        self.hex = String(value)
    }

    /// Builds a digest from a raw hash value.
    public init(algorithm: Algorithm, bytes: some Sequence<UInt8>) {
        let table = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        out.reserveCapacity(algorithm.hexLength)
        for byte in bytes {
            out.append(table[Int(byte >> 4)])
            out.append(table[Int(byte & 0xF)])
        }
        self.algorithm = algorithm
        self.hex = String(decoding: out, as: UTF8.self)
    }

    public var description: String { "\(algorithm.rawValue):\(hex)" }

    /// Relative path of the blob in a content-addressed tree: `<alg>/<2 hex>/<hex>`.
    /// Built only from the parsed, validated value, so it cannot contain `/` or `..`.
    public var shardedPath: String { "\(algorithm.rawValue)/\(hex.prefix(2))/\(hex)" }

    public static func < (lhs: Digest, rhs: Digest) -> Bool { lhs.description < rhs.description }

    @inline(__always)
    static func isLowerHex(_ c: UInt8) -> Bool {
        (c >= 0x30 && c <= 0x39) || (c >= 0x61 && c <= 0x66)
    }
}

extension Digest: Codable {
    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        try self.init(parsing: text)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}
