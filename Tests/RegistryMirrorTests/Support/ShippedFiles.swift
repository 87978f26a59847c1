import Foundation
import Testing

/// What the repository ships besides code (config/, deploy/, docs/), as tests read it.
enum ShippedFiles {
    static let root = ConfigurationTests.packageRoot

    static func text(_ relative: String) throws -> String {
        try String(contentsOfFile: root + "/" + relative, encoding: .utf8)
    }

    /// `config/*.yaml`, sorted.
    static func configs() throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: root + "/config").filter { $0.hasSuffix(".yaml") }.sorted()
    }

    /// The shipped configs keep the paths an operator uses: secrets, CAs and the htpasswd file
    /// under /etc/registry-mirror/, which must exist when a config is loaded. Tests load a copy
    /// with that prefix mapped to `dir`, where every file the copy names exists as a stand-in.
    static let operatorDirectory = "/etc/registry-mirror/"

    /// A copy of `text` (a config) with /etc/registry-mirror/ mapped into `dir`, stand-ins created.
    static func stage(_ text: String, named name: String, in dir: TemporaryDirectory) throws -> String {
        let staged = text.replacingOccurrences(of: operatorDirectory, with: dir.path + "/etc/")
        try FileManager.default.createDirectory(atPath: dir.path + "/etc", withIntermediateDirectories: true)
        let pattern = try NSRegularExpression(pattern: NSRegularExpression.escapedPattern(for: dir.path + "/etc/") + "[A-Za-z0-9._-]+")
        for match in pattern.matches(in: staged, range: NSRange(staged.startIndex..., in: staged)) {
            let path = String(staged[Range(match.range, in: staged)!])
            try standIn(for: path).write(toFile: path, atomically: true, encoding: .utf8)
        }
        let file = dir.path + "/" + name
        try staged.write(toFile: file, atomically: true, encoding: .utf8)
        return file
    }

    static func stageConfig(_ name: String, in dir: TemporaryDirectory) throws -> String {
        try stage(text("config/" + name), named: name, in: dir)
    }

    static let standInPassword = "stand-in-password"

    /// Plausible contents: the loader only reads passwords and checks that the others exist.
    private static func standIn(for path: String) -> String {
        if path.hasSuffix("htpasswd") { return "ci-runner:$2b$12$VLZpZqKiy6D2msDoNJmsKu6UTc39b1JrIdr160G5leH.Ocd4Skgxa\n" }
        if path.hasSuffix(".pem") { return "# stand-in for a PEM CA bundle\n" }
        // TLS files are parsed at load: real PEM.
        if path.hasSuffix(".crt") { return StandInTLS.certificate }
        if path.hasSuffix(".key") { return StandInTLS.key }
        return standInPassword + "\n"
    }
}

/// One finished command.
struct ToolResult: CustomStringConvertible {
    let status: Int32
    let stdout: String
    let stderr: String
    var description: String { "exit \(status)\n--- stdout ---\n\(stdout)\n--- stderr ---\n\(stderr)" }
}

enum Tools {
    /// The debug build of the CLI, as the end-to-end tests find it (REGISTRY_MIRROR_E2E_BINARY overrides).
    static var mirrorBinary: String {
        if let path = ProcessInfo.processInfo.environment["REGISTRY_MIRROR_E2E_BINARY"], !path.isEmpty { return path }
        return ShippedFiles.root + "/.build/debug/registry-mirror"
    }

    /// A program on PATH (or in the usual system directories), or nil.
    static func find(_ name: String) -> String? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
        let dirs = path.split(separator: ":").map(String.init) + ["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"]
        return dirs.map { $0 + "/" + name }.first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    /// Runs a short command to completion. Output goes through files, so a chatty command cannot
    /// block on a full pipe.
    static func run(_ executable: String, _ arguments: [String]) throws -> ToolResult {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        for name in ["out", "err"] { try Data().write(to: URL(fileURLWithPath: dir.path + "/" + name)) }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: dir.path + "/out"))
        process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: dir.path + "/err"))
        try process.run()
        process.waitUntilExit()
        return ToolResult(status: process.terminationStatus,
                          stdout: (try? String(contentsOfFile: dir.path + "/out", encoding: .utf8)) ?? "",
                          stderr: (try? String(contentsOfFile: dir.path + "/err", encoding: .utf8)) ?? "")
    }

    /// `registry-mirror ARGS…`; a missing binary is a failure, not a skip.
    static func mirror(_ arguments: [String]) throws -> ToolResult {
        guard FileManager.default.isExecutableFile(atPath: mirrorBinary) else {
            throw ShippedFileError("\(mirrorBinary) is missing: run `swift build --build-tests` first")
        }
        return try run(mirrorBinary, arguments)
    }
}

struct ShippedFileError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
