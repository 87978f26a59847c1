import Foundation
import Mirror
import OCI

/// One entry of `watch.images`: an image the server keeps fresh (see `WatchList`).
public struct WatchEntry: Sendable, Equatable {
    /// `ref`: `[host/]name[:tag|@digest]`, resolved like `seed`'s arguments when the server starts.
    public var reference: String
    /// `platforms`: the instances of a multi-platform image to keep. Default: this machine's
    /// platform, as `seed` copies by default.
    public var platforms: PlatformSelection = .system

    public init(reference: String, platforms: PlatformSelection = .system) {
        self.reference = reference
        self.platforms = platforms
    }

    public static let keys: Set<String> = ["ref", "platforms"]
}

extension MirrorConfiguration {
    static let defaultWatchInterval: Duration = .seconds(3600)

    /// `watch.images`: a list of `{ref, platforms}` mappings, or of plain references.
    /// References are checked against the grammar here; against the upstreams when the
    /// server starts, since `--upstream` may replace the file's list.
    static func parseWatchImages(_ node: Any, problems: inout [String]) -> [WatchEntry] {
        guard let list = node as? [Any] else {
            problems.append("watch.images: must be a list")
            return []
        }
        var out: [WatchEntry] = []
        for (i, item) in list.enumerated() {
            let at = "watch.images[\(i)]"
            var map: [String: Any]
            if let text = item as? String {
                map = ["ref": text]
            } else if let mapping = item as? [String: Any] {
                map = mapping
            } else {
                problems.append("\(at): must be a reference or a mapping with ref and platforms")
                continue
            }
            for key in map.keys.sorted() where !WatchEntry.keys.contains(key) { problems.append("\(at).\(key): unknown key") }
            guard let reference = map["ref"].map({ "\($0)" }) else {
                problems.append("\(at).ref: required")
                continue
            }
            do {
                _ = try ImageReference(parsing: reference)
            } catch {
                problems.append("\(at).ref: \(error.message)")
                continue
            }
            var entry = WatchEntry(reference: reference)
            if let platforms = map["platforms"] {
                if "\(platforms)" == "all" {
                    entry.platforms = .all
                } else {
                    var chosen: [Platform] = []
                    for (j, item) in ((platforms as? [Any]) ?? [platforms]).enumerated() {
                        if let platform = try? Platform(parsing: "\(item)") { chosen.append(platform) } else {
                            problems.append("\(at).platforms[\(j)]: must be os/arch[/variant] (or the whole list `all`), got \"\(item)\"")
                        }
                    }
                    if !chosen.isEmpty { entry.platforms = .specific(chosen) }
                }
            }
            out.append(entry)
        }
        return out
    }

    mutating func applyWatch(_ values: [String: String], problems: inout [String]) {
        if let v = values["watch.interval"] {
            if let d = UpstreamSpec.duration(v), d > .zero { watchInterval = d } else {
                problems.append("watch.interval: must be a duration like 30m or 1h; got \"\(v)\"")
            }
        }
        if offline, !watchImages.isEmpty {
            problems.append("watch.images: an offline mirror cannot keep images fresh; remove the list or offline")
        }
    }
}

extension ServeSettings {
    /// The watch list resolved against the upstreams, the way `seed` resolves its arguments.
    /// Every entry that does not resolve is listed in one error.
    public func resolvedWatchImages() throws(ConfigurationError) -> [WatchList.Image] {
        var images: [WatchList.Image] = []
        var problems: [String] = []
        for (i, entry) in watchImages.enumerated() {
            do throws(MirrorError) {
                let (repository, reference, name) = try resolve(entry.reference)
                images.append(WatchList.Image(repository: repository, reference: reference, name: name, platforms: entry.platforms))
            } catch {
                problems.append("watch.images[\(i)].ref: \(error.message)")
            }
        }
        guard problems.isEmpty else { throw ConfigurationError(problems: problems) }
        return images
    }
}
