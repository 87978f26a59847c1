#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Logging
import NIOSSL
import Synchronization

/// The PEM files of the server's TLS identity (`http.tls.*`).
public struct TLSFiles: Sendable, Equatable {
    /// The certificate, followed by any intermediates.
    public var certificate: String
    public var key: String
    /// Client certificates must chain to one of these CAs (mutual TLS). Nil: none is asked for.
    public var clientCA: String?

    public init(certificate: String, key: String, clientCA: String? = nil) {
        self.certificate = certificate
        self.key = key
        self.clientCA = clientCA
    }
}

/// Why a TLS identity could not be loaded: one line per problem, each naming its key.
public struct TLSIdentityError: Error, CustomStringConvertible {
    public let problems: [String]
    public var description: String { problems.joined(separator: "; ") }
}

/// The server's TLS context, rebuilt when its files change.
///
/// Each new connection asks for `context()`; at most once a second that looks at the files'
/// modification time, size and inode, and when one changed, loads them again. Open
/// connections keep the context they started with. A new set that does not load (a key that
/// does not match, a file half-written) is logged and the previous context kept; it is not
/// tried again until a file changes once more.
public final class TLSIdentity: Sendable {
    public let files: TLSFiles
    private let logger: Logger
    private let state: Mutex<State>
    static let checkInterval: Duration = .seconds(1)

    private struct State {
        var context: NIOSSLContext
        var stamps: [FileStamp?]
        var nextCheck: ContinuousClock.Instant
    }

    public init(files: TLSFiles, logger: Logger) throws(TLSIdentityError) {
        self.files = files
        self.logger = logger
        let stamps = Self.stamps(of: files)
        let context = try Self.load(files).get()
        state = Mutex(State(context: context, stamps: stamps, nextCheck: .now + Self.checkInterval))
    }

    /// What is wrong with `files`, for validation at configuration load; empty when they load.
    public static func problems(_ files: TLSFiles) -> [String] {
        if case .failure(let error) = load(files) { return error.problems }
        return []
    }

    /// The context for a new connection: the current files'.
    public func context() -> NIOSSLContext {
        let now = ContinuousClock.now
        let (current, previous) = state.withLock { state -> (NIOSSLContext, [FileStamp?]?) in
            guard now >= state.nextCheck else { return (state.context, nil) }
            state.nextCheck = now + Self.checkInterval
            return (state.context, state.stamps)
        }
        guard let previous else { return current }
        let stamps = Self.stamps(of: files)
        guard stamps != previous else { return current }
        // Loaded outside the lock: other connections meanwhile get the current context.
        let loaded = Self.load(files)
        let context = state.withLock { state -> NIOSSLContext in
            state.stamps = stamps
            if case .success(let context) = loaded { state.context = context }
            return state.context
        }
        switch loaded {
        case .success:
            logger.info("TLS certificate reloaded", metadata: ["http.tls.certificate": "\(files.certificate)"])
        case .failure(let error):
            logger.error("TLS files changed but do not load; still serving the previous certificate: \(error)",
                         metadata: ["http.tls.certificate": "\(files.certificate)"])
        }
        return context
    }

    /// TLS 1.2 and 1.3 only; with a client CA, a client without a certificate it signed is refused
    /// during the handshake.
    static func load(_ files: TLSFiles) -> Result<NIOSSLContext, TLSIdentityError> {
        var problems: [String] = []
        let chain = certificates(files.certificate, key: "http.tls.certificate", &problems)
        var privateKey: NIOSSLPrivateKey?
        if readable(files.key, key: "http.tls.key", &problems) {
            do {
                privateKey = try NIOSSLPrivateKey(file: files.key, format: .pem)
            } catch {
                problems.append("http.tls.key: \(files.key) is not a PEM private key (\(error))")
            }
        }
        let roots = files.clientCA.map { certificates($0, key: "http.tls.client_ca", &problems) }
        guard problems.isEmpty, let privateKey, !chain.isEmpty else { return .failure(TLSIdentityError(problems: problems)) }
        var configuration = TLSConfiguration.makeServerConfiguration(certificateChain: chain.map { .certificate($0) },
                                                                     privateKey: .privateKey(privateKey))
        configuration.minimumTLSVersion = .tlsv12
        configuration.maximumTLSVersion = .tlsv13
        // ALPN: HTTP/2 when the client offers it, else HTTP/1.1 (also for clients that offer nothing).
        configuration.applicationProtocols = ["h2", "http/1.1"]
        if let roots {
            // A server does not check the client's name, only that a trusted CA signed it.
            configuration.certificateVerification = .noHostnameVerification
            configuration.trustRoots = .certificates(roots)
            configuration.sendCANameList = true
        }
        do {
            return .success(try NIOSSLContext(configuration: configuration))
        } catch {
            return .failure(TLSIdentityError(problems: [
                "http.tls.key: \(files.key) does not go with the certificate in \(files.certificate) (\(error))",
            ]))
        }
    }

    private static func readable(_ path: String, key: String, _ problems: inout [String]) -> Bool {
        guard access(path, R_OK) == 0 else {
            problems.append("\(key): \(path) cannot be read")
            return false
        }
        return true
    }

    private static func certificates(_ path: String, key: String, _ problems: inout [String]) -> [NIOSSLCertificate] {
        guard readable(path, key: key, &problems) else { return [] }
        do {
            let certificates = try NIOSSLCertificate.fromPEMFile(path)
            if certificates.isEmpty { problems.append("\(key): \(path) holds no PEM certificate") }
            return certificates
        } catch {
            problems.append("\(key): \(path) is not a PEM certificate (\(error))")
            return []
        }
    }

    private static func stamps(of files: TLSFiles) -> [FileStamp?] {
        [files.certificate, files.key, files.clientCA].map { $0.flatMap(FileStamp.init(path:)) }
    }
}

/// What tells a changed file: replaced (inode), rewritten (size, modification time).
struct FileStamp: Equatable {
    let device: UInt64
    let inode: UInt64
    let size: Int64
    let seconds: Int
    let nanoseconds: Int

    init?(path: String) {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        device = UInt64(info.st_dev)
        inode = UInt64(info.st_ino)
        size = Int64(info.st_size)
        #if canImport(Darwin)
        seconds = Int(info.st_mtimespec.tv_sec)
        nanoseconds = Int(info.st_mtimespec.tv_nsec)
        #else
        seconds = Int(info.st_mtim.tv_sec)
        nanoseconds = Int(info.st_mtim.tv_nsec)
        #endif
    }
}
