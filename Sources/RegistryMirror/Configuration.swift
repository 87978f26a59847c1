import Foundation
import Logging
import OCI
import Upstream
import Yams

/// The mirror's configuration: embedded defaults, then a YAML file, then `REGISTRY_MIRROR_*`
/// environment variables; command-line flags are applied last by the caller.
///
/// Validation collects every problem, with its key path, before failing, so an operator
/// fixes a file in one pass. Unknown keys are errors: a typo must not silently fall back
/// to a default. Every key is listed, with its default, in `config/registry-mirror.yaml`.
public struct MirrorConfiguration: Sendable, Equatable {
    public var listen = "0.0.0.0:5000"
    public var dataDirectory = "data"
    public var logLevel = Logger.Level.info
    /// `http.sendfile`: send blob files with sendfile(2).
    public var sendfile = true

    public init() {}

    /// Every key path this version understands, with its environment variable.
    public static let keys: [(path: String, environment: String)] = [
        ("listen", "REGISTRY_MIRROR_LISTEN"),
        ("data_dir", "REGISTRY_MIRROR_DATA_DIR"),
        ("log.level", "REGISTRY_MIRROR_LOG_LEVEL"),
        ("http.sendfile", "REGISTRY_MIRROR_HTTP_SENDFILE"),
    ]

    /// Loads `file` (if given) over the defaults, then the environment over that.
    public static func load(file: String?, environment: [String: String] = ProcessInfo.processInfo.environment) throws(ConfigurationError) -> MirrorConfiguration {
        var values: [String: String] = [:]
        var problems: [String] = []
        if let file {
            guard let text = try? String(contentsOfFile: file, encoding: .utf8) else {
                throw ConfigurationError(problems: ["\(file): cannot be read"])
            }
            do {
                let node = try Yams.load(yaml: text)
                if let node { flatten(node, path: "", into: &values, problems: &problems) }
            } catch {
                throw ConfigurationError(problems: ["\(file): not valid YAML: \(error)"])
            }
        }
        for (path, variable) in keys {
            if let value = environment[variable] { values[path] = value }
        }
        var config = MirrorConfiguration()
        config.apply(values, problems: &problems)
        guard problems.isEmpty else { throw ConfigurationError(problems: problems) }
        return config
    }

    /// Nested mappings become dotted key paths; anything unknown is a problem.
    static func flatten(_ node: Any, path: String, into values: inout [String: String], problems: inout [String]) {
        if let mapping = node as? [String: Any] {
            for (key, child) in mapping.sorted(by: { $0.key < $1.key }) {
                flatten(child, path: path.isEmpty ? key : "\(path).\(key)", into: &values, problems: &problems)
            }
            return
        }
        guard keys.contains(where: { $0.path == path }) else {
            problems.append("\(path.isEmpty ? "(top level)" : path): unknown key")
            return
        }
        if node is [Any] {
            problems.append("\(path): expected a single value, got a list")
        } else {
            values[path] = "\(node)"
        }
    }

    mutating func apply(_ values: [String: String], problems: inout [String]) {
        if let v = values["listen"] {
            if Self.parseListen(v) == nil { problems.append("listen: must be HOST:PORT, got \"\(v)\"") } else { listen = v }
        }
        if let v = values["data_dir"] {
            if v.isEmpty { problems.append("data_dir: must not be empty") } else { dataDirectory = v }
        }
        if let v = values["log.level"] {
            if let level = Logger.Level(rawValue: v.lowercased()) { logLevel = level } else {
                problems.append("log.level: must be one of trace, debug, info, notice, warning, error, critical; got \"\(v)\"")
            }
        }
        if let v = values["http.sendfile"] {
            switch v.lowercased() {
            case "true", "yes", "1": sendfile = true
            case "false", "no", "0": sendfile = false
            default: problems.append("http.sendfile: must be true or false, got \"\(v)\"")
            }
        }
    }

    /// `HOST:PORT` (IPv6 hosts in brackets) → host and port.
    public static func parseListen(_ text: String) -> (host: String, port: Int)? {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (0...65535).contains(port) else {
            return nil
        }
        let host = String(text[..<colon]).trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        return host.isEmpty ? nil : (host, port)
    }

    /// The serve settings this configuration describes.
    public var serveSettings: ServeSettings {
        var settings = ServeSettings()
        if let (host, port) = Self.parseListen(listen) {
            settings.host = host
            settings.port = port
        }
        settings.dataDirectory = dataDirectory
        settings.zeroCopy = sendfile
        return settings
    }
}

/// Every problem found in a configuration, each with its key path.
public struct ConfigurationError: Error, CustomStringConvertible {
    public let problems: [String]
    public var description: String {
        "invalid configuration (\(problems.count) problem\(problems.count == 1 ? "" : "s")):\n" + problems.map { "  - \($0)" }.joined(separator: "\n")
    }
}

/// Parses the command line's upstream and duration forms.
public enum UpstreamSpec {
    /// `URL` or `NAME=URL`. Without a scheme, https. Without a name, the URL's host[:port]
    /// (Docker Hub's API host is named `docker.io`).
    public static func parse(_ text: String) throws(ConfigurationError) -> UpstreamConfiguration {
        var name: String?
        var target = Substring(text)
        if let eq = text.firstIndex(of: "="), !text[..<eq].contains("/") {
            name = String(text[..<eq])
            target = text[text.index(after: eq)...]
        }
        let withScheme = target.contains("://") ? String(target) : "https://" + target
        guard let url = URL(string: withScheme), let host = url.host, ["http", "https"].contains(url.scheme ?? "") else {
            throw ConfigurationError(problems: ["upstream: not a registry URL: \"\(text)\""])
        }
        let derived = ImageReference.normalizeHost(url.port.map { "\(host):\($0)" } ?? host)
        let finalName = name ?? derived
        guard !finalName.isEmpty, !finalName.contains("/") else {
            throw ConfigurationError(problems: ["upstream: invalid name \"\(finalName)\""])
        }
        return UpstreamConfiguration(name: finalName, url: url)
    }

    /// `500ms`, `30s`, `5m`, `2h`, or plain seconds.
    public static func duration(_ text: String) -> Duration? {
        let units: [(String, Int64)] = [("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000)]
        for (suffix, millis) in units where text.hasSuffix(suffix) {
            guard let value = Int64(text.dropLast(suffix.count)), value >= 0 else { return nil }
            return .milliseconds(value * millis)
        }
        return Int64(text).flatMap { $0 >= 0 ? .seconds($0) : nil }
    }
}
