import COpenSSL

/// Incremental SHA-256 / SHA-512 through OpenSSL's EVP interface (≈1.4 GiB/s with SHA-NI).
///
/// Not thread-safe: one writer feeds it. `~Copyable` so the EVP context has one owner.
public struct DigestHasher: ~Copyable {
    private let context: OpaquePointer
    public let algorithm: Digest.Algorithm

    public init(_ algorithm: Digest.Algorithm = .sha256) {
        guard let context = EVP_MD_CTX_new() else { fatalError("EVP_MD_CTX_new failed: out of memory") }
        self.context = context
        self.algorithm = algorithm
        let md = algorithm == .sha256 ? EVP_sha256() : EVP_sha512()
        EVP_DigestInit_ex(context, md, nil)
    }

    deinit { EVP_MD_CTX_free(context) }

    public mutating func update(_ buffer: UnsafeRawBufferPointer) {
        guard let base = buffer.baseAddress, buffer.count > 0 else { return }
        EVP_DigestUpdate(context, base, buffer.count)
    }

    public mutating func update(_ bytes: some Collection<UInt8>) {
        if bytes.withContiguousStorageIfAvailable({ update(UnsafeRawBufferPointer($0)) }) == nil {
            Array(bytes).withUnsafeBytes { update($0) }
        }
    }

    /// The digest of everything fed so far. Consumes the hasher.
    public consuming func finalize() -> Digest {
        var out = [UInt8](repeating: 0, count: 64)
        var length: UInt32 = 0
        out.withUnsafeMutableBufferPointer { _ = EVP_DigestFinal_ex(context, $0.baseAddress, &length) }
        return Digest(algorithm: algorithm, bytes: out.prefix(Int(length)))
    }

    /// One-shot digest of a buffer.
    public static func digest(of bytes: some Collection<UInt8>, algorithm: Digest.Algorithm = .sha256) -> Digest {
        var hasher = DigestHasher(algorithm)
        hasher.update(bytes)
        return hasher.finalize()
    }
}

/// Checks a stream against an expected digest and size as it passes through.
public struct DigestVerifier: ~Copyable {
    public let expected: Digest
    public let expectedSize: Int64?
    private var hasher: DigestHasher
    public private(set) var count: Int64 = 0

    public init(expected: Digest, expectedSize: Int64? = nil) {
        self.expected = expected
        self.expectedSize = expectedSize
        self.hasher = DigestHasher(expected.algorithm)
    }

    /// Feeds a chunk; throws as soon as the stream is longer than the expected size.
    public mutating func update(_ buffer: UnsafeRawBufferPointer) throws(OCIError) {
        count += Int64(buffer.count)
        if let expectedSize, count > expectedSize {
            throw OCIError(.sizeMismatch, "\(expected): more than the expected \(expectedSize) bytes")
        }
        hasher.update(buffer)
    }

    /// Throws unless the stream had exactly the expected size and digest.
    public consuming func verify() throws(OCIError) {
        let count = self.count
        if let expectedSize, count != expectedSize {
            throw OCIError(.sizeMismatch, "\(expected): got \(count) bytes, expected \(expectedSize)")
        }
        let actual = hasher.finalize()
        guard actual == expected else {
            throw OCIError(.digestMismatch, "content has digest \(actual), expected \(expected)")
        }
    }
}
