import Foundation
import OCI

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A failure in the end-to-end harness itself (a tool missing, a server that never came up, …).
struct E2EError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Where things are.
enum TestPaths {
    /// The package root: three directories up from Tests/EndToEndTests/<file>.swift.
    static let packageRoot: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent()  // EndToEndTests
        .deletingLastPathComponent()  // Tests
        .deletingLastPathComponent()  // package root

    /// `<package root>/.build/debug/registry-mirror`, as `swift build` writes it; the environment
    /// variable REGISTRY_MIRROR_E2E_BINARY overrides it (to test another build).
    static var mirrorBinary: String {
        if let override = ProcessInfo.processInfo.environment["REGISTRY_MIRROR_E2E_BINARY"], !override.isEmpty {
            return override
        }
        return packageRoot.appendingPathComponent(".build/debug/registry-mirror").path
    }

    /// The mirror binary, or an error saying how to get it. Never a skip: a missing binary is a failure.
    static func requireMirrorBinary() throws -> String {
        let path = mirrorBinary
        guard FileManager.default.isExecutableFile(atPath: path) else {
            throw E2EError("the binary under test is missing: \(path) does not exist or is not executable; run `swift build` (or `swift build --build-tests`) in \(packageRoot.path) first")
        }
        return path
    }

    /// Resolves a program name through PATH (and the usual system directories).
    static func executable(_ name: String) throws -> String {
        if name.contains("/") {
            guard FileManager.default.isExecutableFile(atPath: name) else { throw E2EError("\(name) is not executable") }
            return name
        }
        let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
        let dirs = path.split(separator: ":").map(String.init) + ["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"]
        for dir in dirs where FileManager.default.isExecutableFile(atPath: dir + "/" + name) {
            return dir + "/" + name
        }
        throw E2EError("required program \(name) was not found in PATH")
    }
}

/// A temporary directory, removed when the last reference goes away.
final class TemporaryDirectory: @unchecked Sendable {
    let url: URL
    var path: String { url.path }

    init(prefix: String = "registry-mirror-e2e") throws {
        let base = URL(fileURLWithPath: NSTemporaryDirectory())
        url = base.appendingPathComponent("\(prefix)-\(UUID().uuidString.prefix(8))", isDirectory: true)
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }

    func subdirectory(_ name: String, create: Bool = true) throws -> URL {
        let sub = url.appendingPathComponent(name, isDirectory: true)
        if create { try FileManager.default.createDirectory(at: sub, withIntermediateDirectories: true) }
        return sub
    }

    func remove() {
        try? FileManager.default.removeItem(at: url)
    }

    deinit { remove() }
}

// MARK: - Ports

enum Ports {
    /// A TCP port on 127.0.0.1 that was free a moment ago (bind to :0, read it back, close).
    static func free() throws -> Int {
        #if canImport(Glibc)
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        #else
        let fd = socket(AF_INET, SOCK_STREAM, 0)
        #endif
        guard fd >= 0 else { throw E2EError("socket() failed: errno \(errno)") }
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = 0
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0 else { throw E2EError("bind(127.0.0.1:0) failed: errno \(errno)") }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let named = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard named == 0 else { throw E2EError("getsockname failed: errno \(errno)") }
        return Int(UInt16(bigEndian: addr.sin_port))
    }
}

// MARK: - Files and digests

enum Files {
    static func read(_ url: URL) throws -> [UInt8] { [UInt8](try Data(contentsOf: url)) }

    static func write(_ bytes: [UInt8], to url: URL) throws {
        try Data(bytes).write(to: url)
    }

    /// Every regular file under `root` (recursively); empty if `root` does not exist.
    static func regularFiles(under root: URL) -> [String] {
        guard let enumerator = FileManager.default.enumerator(atPath: root.path) else { return [] }
        var out: [String] = []
        while let relative = enumerator.nextObject() as? String {
            let full = root.appendingPathComponent(relative).path
            var isDirectory: ObjCBool = false
            if FileManager.default.fileExists(atPath: full, isDirectory: &isDirectory), !isDirectory.boolValue {
                out.append(relative)
            }
        }
        return out.sorted()
    }

    static func copyDirectory(_ from: URL, to: URL) throws {
        try FileManager.default.copyItem(at: from, to: to)
    }
}

extension Array where Element == UInt8 {
    var sha256: Digest { DigestHasher.digest(of: self) }
}

extension Data {
    var sha256: Digest { DigestHasher.digest(of: [UInt8](self)) }
}

// MARK: - Progress

/// One line per harness step on stderr, with the time since the test process started, so a slow
/// or stuck step is easy to spot in CI logs.
enum Progress {
    static let start = ContinuousClock.now

    static func step(_ message: String) {
        let elapsed = ContinuousClock.now - start
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        FileHandle.standardError.write(Data("[e2e +\(String(format: "%.2f", seconds))s] \(message)\n".utf8))
    }
}
