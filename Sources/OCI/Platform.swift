/// An image platform, `os/arch[/variant]`, normalized like containerd's `platforms` package.
///
/// `arm64` without a variant means `v8`; `arm` without one means `v7`. Common aliases
/// (`x86_64`, `aarch64`) map to the OCI names.
public struct Platform: Hashable, Sendable, Codable, CustomStringConvertible {
    public var os: String
    public var architecture: String
    public var variant: String?
    public var osVersion: String?
    public var osFeatures: [String]?

    enum CodingKeys: String, CodingKey {
        case os, architecture, variant
        case osVersion = "os.version"
        case osFeatures = "os.features"
    }

    public init(os: String, architecture: String, variant: String? = nil) {
        self.os = os
        self.architecture = architecture
        self.variant = variant
    }

    /// Parses `os/arch[/variant]`.
    public init(parsing text: String) throws(OCIError) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        guard (2...3).contains(parts.count),
            parts.allSatisfy({ !$0.isEmpty && $0.utf8.allSatisfy { b in (b >= 0x61 && b <= 0x7A) || (b >= 0x30 && b <= 0x39) || b == UInt8(ascii: "_") || b == UInt8(ascii: "-") || (b >= 0x41 && b <= 0x5A) } })
        else {
            throw OCIError(.invalidPlatform, "platform must be os/arch[/variant]: \(text.prefix(100))")
        }
        self.init(os: parts[0].lowercased(), architecture: parts[1].lowercased(), variant: parts.count == 3 ? parts[2].lowercased() : nil)
    }

    /// The platform with aliases resolved and the default variant filled in.
    public var normalized: Platform {
        var p = Platform(os: os.lowercased(), architecture: architecture.lowercased(), variant: variant?.lowercased())
        switch p.architecture {
        case "x86_64", "x86-64": p.architecture = "amd64"
        case "aarch64": p.architecture = "arm64"
        case "armhf": p.architecture = "arm"; p.variant = p.variant ?? "v7"
        case "armel": p.architecture = "arm"; p.variant = p.variant ?? "v6"
        case "i386", "i686": p.architecture = "386"
        default: break
        }
        switch p.architecture {
        case "arm64": if p.variant == nil || p.variant == "8" { p.variant = "v8" }
        case "arm":
            if p.variant == nil { p.variant = "v7" }
            if let v = p.variant, !v.hasPrefix("v") { p.variant = "v" + v }
        case "amd64": if p.variant == "v1" { p.variant = nil }
        default: break
        }
        return p
    }

    /// True when an index entry's platform satisfies this requested platform.
    public func matches(_ candidate: Platform) -> Bool {
        let a = normalized, b = candidate.normalized
        return a.os == b.os && a.architecture == b.architecture && a.variant == b.variant
    }

    /// The platform of the machine this runs on.
    public static var current: Platform {
        #if arch(x86_64)
        return Platform(os: "linux", architecture: "amd64")
        #elseif arch(arm64)
        return Platform(os: "linux", architecture: "arm64", variant: "v8")
        #else
        return Platform(os: "linux", architecture: "unknown")
        #endif
    }

    public var description: String {
        variant.map { "\(os)/\(architecture)/\($0)" } ?? "\(os)/\(architecture)"
    }
}
