import Foundation
import OCI
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Shows `TransferEvent`s: live bars per image and per blob (bytes and rate) on a terminal,
/// plain lines otherwise (CI logs, pipes), one per finished blob and image.
final class ProgressReporter: Sendable {
    private struct Blob {
        var image: String
        var size: Int64?
        var bytes: Int64 = 0
        let started = ContinuousClock.now
    }
    private struct Image {
        var blobs = 0
        var done = 0
        var bytes: Int64 = 0
        let started = ContinuousClock.now
    }
    private struct State {
        var images: [String: Image] = [:]
        var order: [String] = []
        var blobs: [Digest: Blob] = [:]
        var blobOrder: [Digest] = []
        var drawnLines = 0
        var lastDraw = ContinuousClock.now - .seconds(1)
    }

    private let state = Mutex(State())
    let isTerminal: Bool
    let verb: String

    /// `verb` names the job in plain lines: "seed", "export", "import".
    init(verb: String, isTerminal: Bool = isatty(STDOUT_FILENO) == 1) {
        self.verb = verb
        self.isTerminal = isTerminal
    }

    var handler: ProgressHandler { { [self] event in handle(event) } }

    func handle(_ event: TransferEvent) {
        var out = ""
        state.withLock { s in
            var permanent: [String] = []
            var force = false
            switch event {
            case .imageStarted(let image):
                if s.images[image] == nil { s.order.append(image) }
                s.images[image] = Image()
                force = true
            case .blobStarted(let image, let digest, let size):
                if s.blobs[digest] == nil { s.blobOrder.append(digest) }
                s.blobs[digest] = Blob(image: image, size: size)
                s.images[image, default: Image()].blobs += 1
            case .blobProgress(_, let digest, let bytes, let size):
                s.blobs[digest]?.bytes = bytes
                if let size { s.blobs[digest]?.size = size }
            case .blobFinished(let image, let digest, let bytes, let cached):
                let started = s.blobs[digest]?.started ?? .now
                s.blobs[digest] = nil
                s.blobOrder.removeAll { $0 == digest }
                s.images[image, default: Image()].done += 1
                s.images[image, default: Image()].bytes += bytes
                if !isTerminal {
                    let how = cached ? "already cached" : "in \(Self.seconds(started.duration(to: .now)))"
                    permanent.append("\(verb): \(image): \(Self.short(digest)) \(ByteCount(bytes)) \(how)")
                }
                force = true
            case .imageFinished(let image, let error):
                let info = s.images[image] ?? Image()
                let elapsed = info.started.duration(to: .now)
                if let error {
                    permanent.append("\(verb): \(image): FAILED: \(error)")
                } else {
                    permanent.append("\(verb): \(image): done, \(info.done) blobs, \(ByteCount(info.bytes)) in \(Self.seconds(elapsed)) (\(Self.rate(info.bytes, elapsed)))")
                }
                s.images[image] = nil
                s.order.removeAll { $0 == image }
                force = true
            }
            guard isTerminal else {
                out = permanent.map { $0 + "\n" }.joined()
                return
            }
            let now = ContinuousClock.now
            guard force || !permanent.isEmpty || s.lastDraw.duration(to: now) > .milliseconds(100) else { return }
            s.lastDraw = now
            // Erase the live region, print finished lines above it, redraw it.
            if s.drawnLines > 0 { out += "\u{1B}[\(s.drawnLines)A\u{1B}[J" }
            for line in permanent { out += line + "\n" }
            var live: [String] = []
            for name in s.order {
                guard let image = s.images[name] else { continue }
                live.append("\(name)  \(image.done)/\(image.blobs) blobs  \(ByteCount(image.bytes))")
                for digest in s.blobOrder {
                    guard let blob = s.blobs[digest], blob.image == name else { continue }
                    live.append("  " + Self.bar(digest, blob, now: now))
                }
            }
            for line in live { out += line + "\n" }
            s.drawnLines = live.count
        }
        if !out.isEmpty { FileHandle.standardOutput.write(Data(out.utf8)) }
    }

    private static func bar(_ digest: Digest, _ blob: Blob, now: ContinuousClock.Instant) -> String {
        let width = 24
        let elapsed = blob.started.duration(to: now)
        guard let size = blob.size, size > 0 else {
            return "\(short(digest))  \(ByteCount(blob.bytes))  \(rate(blob.bytes, elapsed))"
        }
        let filled = Int(Double(width) * min(1, Double(blob.bytes) / Double(size)))
        return "\(short(digest))  [\(String(repeating: "#", count: filled))\(String(repeating: "-", count: width - filled))]  \(ByteCount(blob.bytes)) / \(ByteCount(size))  \(rate(blob.bytes, elapsed))"
    }

    static func short(_ digest: Digest) -> String { "\(digest.algorithm.rawValue):\(digest.hex.prefix(12))" }

    static func seconds(_ d: Duration) -> String {
        String(format: "%.1fs", Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18)
    }

    static func rate(_ bytes: Int64, _ d: Duration) -> String {
        let s = Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
        guard s > 0.001 else { return "-" }
        return "\(ByteCount(Int64(Double(bytes) / s)))/s"
    }
}
