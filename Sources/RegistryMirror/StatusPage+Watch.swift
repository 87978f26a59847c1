import Foundation
import Mirror
import OCI

extension StatusPage {
    /// The watch list: when it last ran and runs next, and each image's last refresh.
    static func watchSection(_ watch: WatchList.Snapshot, now: Date) -> String {
        var html = "<section id=\"watch\"><h2>Watch list</h2><p class=\"sub\">"
        html += "every \(duration(TimeInterval(watch.interval.components.seconds))) · "
        if watch.running {
            html += "refreshing now"
        } else if let finished = watch.lastRunFinished {
            html += "last run \(duration(now.timeIntervalSince(finished))) ago"
        } else {
            html += "first run starting"
        }
        if let next = watch.nextRun { html += " · next in \(duration(next.timeIntervalSince(now)))" }
        html += " · \(watch.runs) runs</p>"
        html += "<table><tr><th>Image</th><th>Platforms</th><th>Digest</th><th>Result</th><th>Checked</th><th>Error</th></tr>"
        for image in watch.images {
            let digest = image.digest.map { "<code>\(escape(String($0.description.prefix(19))))…</code>" } ?? "<span class=\"muted\">–</span>"
            var result: String
            switch image.outcome {
            case .pending: result = "<span class=\"muted\">pending</span>"
            case .current: result = "<span class=\"ok\">up to date</span>"
            case .updated: result = "<span class=\"ok\">updated</span>" + (image.fetchedBytes > 0 ? " <span class=\"muted\">(\(bytes(image.fetchedBytes)) fetched)</span>" : "")
            case .failed: result = "<span class=\"bad\">failed</span>"
            }
            if let replica = image.checkedBy { result += " <span class=\"muted\">(by \(escape(replica)))</span>" }
            let checked = image.checkedAt.map { "\(duration(now.timeIntervalSince($0))) ago" } ?? "<span class=\"muted\">never</span>"
            let error = image.error.map { "<span class=\"bad\">\(escape(String($0.prefix(160))))</span>" } ?? "<span class=\"muted\">none</span>"
            html += "<tr><td><code>\(escape(image.name))</code></td><td>\(escape(platforms(image.platforms)))</td><td>\(digest)</td><td>\(result)</td><td>\(checked)</td><td>\(error)</td></tr>"
        }
        return html + "</table></section>"
    }

    private static func platforms(_ selection: PlatformSelection) -> String {
        switch selection {
        case .system: return "this machine's (\(Platform.current))"
        case .all: return "all"
        case .specific(let list): return list.map(\.description).joined(separator: ", ")
        }
    }
}
