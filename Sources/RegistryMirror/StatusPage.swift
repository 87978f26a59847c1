import Foundation
import Mirror
import OCI

/// The HTML status page at `/`: store size against the cap, hit ratio and bytes saved
/// since start, upstream health, the top repositories by bytes served, and downloads in
/// progress. Rendered on the server, no JavaScript; it refreshes itself every 10 s.
enum StatusPage {
    struct Fill {
        let upstream: String
        let digest: Digest
        let written: Int64
        let size: Int64?
    }

    static func render(_ s: MirrorStats.Snapshot, upstreams: [(name: String, url: String)], fills: [Fill],
                       offline: Bool, version: String, watch: WatchList.Snapshot? = nil, fleet: Fleet? = nil, now: Date = Date()) -> String {
        let saved = max(0, s.servedBytes - s.upstreamBytes)
        var html = """
        <!doctype html>
        <html lang="en"><head><meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <meta http-equiv="refresh" content="10">
        <title>registry-mirror</title>
        <style>
        body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d2430}
        header{background:#1d2430;color:#fff;padding:18px 32px}header h1{margin:0;font-size:20px}
        header p{margin:4px 0 0;color:#b8c2d3;font-size:13px}
        main{max-width:1100px;margin:0 auto;padding:24px 32px}
        .cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(220px,1fr));gap:16px;margin-bottom:24px}
        .card{background:#fff;border-radius:10px;padding:16px 18px;box-shadow:0 1px 3px rgba(0,0,0,.08)}
        .card h2{margin:0 0 6px;font-size:12px;text-transform:uppercase;letter-spacing:.06em;color:#6b7585}
        .big{font-size:26px;font-weight:600}.sub{color:#6b7585;font-size:13px}
        .bar{height:8px;background:#e7eaf0;border-radius:4px;overflow:hidden;margin-top:10px}
        .bar span{display:block;height:100%;background:#3b82f6}.bar span.warn{background:#f59e0b}
        section{background:#fff;border-radius:10px;padding:16px 18px;box-shadow:0 1px 3px rgba(0,0,0,.08);margin-bottom:20px}
        section h2{margin:0 0 10px;font-size:16px}
        table{width:100%;border-collapse:collapse;font-size:14px}th,td{text-align:left;padding:7px 8px;border-bottom:1px solid #edf0f4}
        th{color:#6b7585;font-weight:600;font-size:12px;text-transform:uppercase;letter-spacing:.04em}
        td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
        code{font:13px ui-monospace,SFMono-Regular,Menlo,monospace}
        .ok{color:#15803d}.bad{color:#b91c1c}.muted{color:#8a93a3}
        </style></head><body>
        <header><h1>registry-mirror</h1><p>\(escape(version)) · up \(duration(now.timeIntervalSince(s.started))) · \(offline ? "offline: serving the cache only" : "pull-through") · API at <code>/v2/</code> · <a style="color:#9cc3ff" href="/metrics">/metrics</a></p></header>
        <main><div class="cards">
        """
        // Store against the cap.
        var storeCard = "<div class=\"card\"><h2>Store</h2><div class=\"big\">\(bytes(s.storeBytes))</div>"
        if let cap = s.storeMaxBytes, cap > 0 {
            let fraction = min(1, Double(s.storeBytes) / Double(cap))
            storeCard += "<div class=\"sub\">of \(bytes(cap)) cap · \(s.storeObjects) objects</div>"
            storeCard += "<div class=\"bar\"><span class=\"\(fraction > 0.9 ? "warn" : "")\" style=\"width:\(String(format: "%.1f", fraction * 100))%\"></span></div>"
        } else {
            storeCard += "<div class=\"sub\">no cap · \(s.storeObjects) objects</div>"
        }
        html += storeCard + "</div>"
        let ratio = s.hitRatio.map { String(format: "%.1f%%", $0 * 100) } ?? "–"
        let lookups = s.cache.values.reduce(0, +)
        html += "<div class=\"card\"><h2>Hit ratio</h2><div class=\"big\">\(ratio)</div><div class=\"sub\">\(lookups) manifest and blob lookups since start</div></div>"
        html += "<div class=\"card\"><h2>Bytes saved</h2><div class=\"big\">\(bytes(saved))</div><div class=\"sub\">\(bytes(s.servedBytes)) served, \(bytes(s.upstreamBytes)) fetched upstream</div></div>"
        html += "<div class=\"card\"><h2>Downloads</h2><div class=\"big\">\(fills.count)</div><div class=\"sub\">in progress · \(s.evictedImages) images evicted · \(s.verificationFailures) verification failures · \(s.storeFailures) local store failures</div></div>"
        html += "</div>"

        // Upstreams.
        html += "<section><h2>Upstreams</h2><table><tr><th>Name</th><th>URL</th><th>State</th><th class=\"num\">Requests</th><th class=\"num\">Failures</th><th class=\"num\">Stale serves</th><th>Last status</th><th>Last error</th><th>Rate limit</th></tr>"
        for upstream in upstreams {
            let h = s.upstreams[upstream.name] ?? MirrorStats.UpstreamHealth()
            let status = h.lastStatus.map { "<span class=\"\($0 < 400 ? "ok" : "bad")\">\($0)</span>" } ?? "<span class=\"muted\">–</span>"
            let error = h.lastError.map { message in
                "<span class=\"bad\">\(escape(String(message.prefix(120))))</span>" + (h.lastErrorAt.map { " <span class=\"muted\">\(duration(now.timeIntervalSince($0))) ago</span>" } ?? "")
            } ?? "<span class=\"muted\">none</span>"
            var limits = h.rateLimit.isEmpty ? "<span class=\"muted\">not seen</span>" : h.rateLimit.sorted { $0.key < $1.key }.map { "<code>\(escape($0.key)): \(escape(String($0.value.prefix(40))))</code>" }.joined(separator: "<br>")
            if let remaining = h.rateLimitRemaining { limits = "<strong>\(remaining) pulls left</strong><br>" + limits }
            html += "<tr><td><code>\(escape(upstream.name))</code></td><td><code>\(escape(upstream.url))</code></td><td>\(state(h, now: now))</td><td class=\"num\">\(h.requests)</td><td class=\"num\">\(h.failures)</td><td class=\"num\">\(h.staleServes)</td><td>\(status)</td><td>\(error)</td><td>\(limits)</td></tr>"
        }
        html += "</table></section>"

        // Top repositories.
        html += "<section><h2>Top repositories by bytes served</h2>"
        let top = s.repositories.sorted { $0.value != $1.value ? $0.value > $1.value : $0.key < $1.key }.prefix(10)
        if top.isEmpty {
            html += "<p class=\"muted\">Nothing served yet.</p>"
        } else {
            html += "<table><tr><th>Repository</th><th class=\"num\">Served</th></tr>"
            for (name, served) in top { html += "<tr><td><code>\(escape(name))</code></td><td class=\"num\">\(bytes(served))</td></tr>" }
            html += "</table>"
        }
        html += "</section>"

        // Fills.
        html += "<section><h2>Downloads in progress</h2>"
        if fills.isEmpty {
            html += "<p class=\"muted\">None.</p>"
        } else {
            html += "<table><tr><th>Upstream</th><th>Blob</th><th class=\"num\">Progress</th></tr>"
            for fill in fills {
                let progress = fill.size.map { size in size > 0 ? "\(bytes(fill.written)) / \(bytes(size)) (\(fill.written * 100 / size)%)" : bytes(fill.written) } ?? bytes(fill.written)
                html += "<tr><td><code>\(escape(fill.upstream))</code></td><td><code>\(escape(String(fill.digest.description.prefix(19))))…</code></td><td class=\"num\">\(progress)</td></tr>"
            }
            html += "</table>"
        }
        html += "</section>"
        if let watch { html += watchSection(watch, now: now) }
        if let fleet { html += fleetSection(fleet) }
        html += "</main></body></html>\n"
        return html
    }

    /// "up", or "down" with how long, and when the next probe may go out.
    static func state(_ h: MirrorStats.UpstreamHealth, now: Date) -> String {
        guard h.down else { return "<span class=\"ok\">up</span>" }
        var text = "<span class=\"bad\">down</span>"
        if let since = h.downSince { text += " <span class=\"muted\">for \(duration(now.timeIntervalSince(since)))</span>" }
        if let next = h.nextCheck { text += "<br><span class=\"muted\">next check in \(duration(next.timeIntervalSince(now)))</span>" }
        return text
    }

    static func escape(_ text: String) -> String {
        var out = ""
        for c in text {
            switch c {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&#39;"
            default: out.append(c)
            }
        }
        return out
    }

    static func bytes(_ n: Int64) -> String { ByteSize.format(n) }

    static func duration(_ seconds: TimeInterval) -> String {
        let s = Int(max(0, seconds))
        if s < 60 { return "\(s)s" }
        if s < 3600 { return "\(s / 60)m \(s % 60)s" }
        if s < 86400 { return "\(s / 3600)h \(s % 3600 / 60)m" }
        return "\(s / 86400)d \(s % 86400 / 3600)h"
    }
}
