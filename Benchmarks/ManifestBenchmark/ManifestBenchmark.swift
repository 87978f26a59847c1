import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import NIOEmbedded
import RegistryMirror
import ServiceLifecycle
import Synchronization

/// The warm manifest lookup in process: the application `registry-mirror serve` builds, driven
/// through its responder (routing, middleware, handler, body) with no socket, from 1, 2, 8
/// and 32 concurrent tasks. A lock every request takes shows as throughput that falls as
/// tasks are added; a path that scales gives about 2× with 2 tasks on 2 cores.
///
/// The data directory must already hold the manifest (`bench/inprocess.sh` imports one with
/// `registry-mirror import`), so this program needs no store or index API of its own.
@main
struct ManifestBenchmark {
    static let usage = """
        usage: manifest-benchmark --data-dir DIR --repository NAME --digest sha256:… [--tasks 1,2,8,32]
                                  [--seconds 2] [--rounds 3] [--log-level error] [--records FILE]
        """

    static func main() async throws {
        var options: [String: String] = [:]
        var arguments = CommandLine.arguments.dropFirst()
        while let name = arguments.popFirst() {
            guard name.hasPrefix("--"), let value = arguments.popFirst() else { fail(usage) }
            options[String(name.dropFirst(2))] = value
        }
        guard let dataDirectory = options["data-dir"], let repository = options["repository"], let digest = options["digest"],
              let tasks = Optional((options["tasks"] ?? "1,2,8,32").split(separator: ",").compactMap { Int($0) }), !tasks.isEmpty,
              let seconds = Double(options["seconds"] ?? "2"), let rounds = Int(options["rounds"] ?? "3"), rounds > 0,
              let level = Logger.Level(rawValue: options["log-level"] ?? "error")
        else { fail(usage) }

        // As `serve` does: process-wide logging to standard error, offline over the data directory.
        bootstrapLogging(format: .text)
        var logger = Logger(label: "registry-mirror")
        logger.logLevel = level
        var settings = ServeSettings()
        settings.dataDirectory = dataDirectory
        settings.offline = true
        settings.port = 0
        let app = try buildApplication(settings, logger: logger)
        let path = "/v2/\(repository)/manifests/\(digest)"
        let results = try await measure(app, path: path, logger: logger, tasks: tasks, seconds: seconds, rounds: rounds)

        print("warm manifest lookup in process (\(path)): \(rounds) round(s) of \(seconds) s per task count, log level \(level)")
        print("tasks  ops/s (median)  (min–max of rounds)")
        var medians: [Int: Double] = [:]
        var records = ""
        for n in tasks {
            let values = results[n]!.sorted()
            let median = values[values.count / 2]
            medians[n] = median
            print(String(format: "%5d  %13.0f  (%.0f–%.0f)", n, median, values.first!, values.last!))
            records += "inprocess.ops.\(n) \(Int(median))\n"
        }
        if let one = medians[1], let two = medians[2] {
            let ratio = two / one
            print(String(format: "2 tasks ÷ 1 task: %.2f (target ≥ 1.8: %@)", ratio, ratio >= 1.8 ? "yes" : "no"))
            records += String(format: "inprocess.ratio.2to1 %.4f\n", ratio)
        }
        // A fall: fewer ops/s with more tasks than with fewer, beyond 5 % (noise between rounds).
        let falls = zip(tasks, tasks.dropFirst()).filter { medians[$1]! < 0.95 * medians[$0]! }
        if falls.isEmpty {
            print("throughput falls as tasks are added: no")
        } else {
            print("throughput falls as tasks are added: YES, " + falls.map { "\($0) → \($1) tasks" }.joined(separator: ", "))
        }
        records += "inprocess.falls \(falls.count)\n"
        if let file = options["records"] {
            try records.write(toFile: file, atomically: true, encoding: .utf8)
        }
    }

    /// Runs the application's services (as `serve` does) while the rounds run; ops/s per round.
    static func measure<App: ApplicationProtocol>(
        _ app: App, path: String, logger: Logger, tasks: [Int], seconds: Double, rounds: Int
    ) async throws -> [Int: [Double]] {
        let responder = try await app.responder
        for process in app.processesRunBeforeServerStart { try await process() }
        let services = ServiceGroup(configuration: .init(services: app.services, logger: logger))
        return try await withThrowingTaskGroup(of: [Int: [Double]]?.self) { group in
            group.addTask { try await services.run(); return nil }
            defer { group.cancelAll() }
            let expected = try await oneRequest(responder, path: path, channel: NIOAsyncTestingChannel(), logger: logger)
            guard expected.status == .ok, expected.bytes > 0 else {
                fail("GET \(path) answered \(expected.status) with \(expected.bytes) bytes; is the manifest in the data directory?")
            }
            var results: [Int: [Double]] = [:]
            _ = try await round(responder, path: path, expected: expected.bytes, tasks: 2, seconds: min(seconds, 1), logger: logger)  // warm-up
            for _ in 0..<rounds {
                for n in tasks {
                    results[n, default: []].append(try await round(responder, path: path, expected: expected.bytes, tasks: n, seconds: seconds, logger: logger))
                }
            }
            await services.triggerGracefulShutdown()
            return results
        }
    }

    /// `tasks` child tasks each send requests back to back until the deadline; total ops/s.
    static func round<Responder: HTTPResponder>(
        _ responder: Responder, path: String, expected: Int, tasks: Int, seconds: Double, logger: Logger
    ) async throws -> Double where Responder.Context: InitializableFromSource<ApplicationRequestContextSource> {
        let start = ContinuousClock.now
        let deadline = start + .milliseconds(Int(seconds * 1000))
        let total = try await withThrowingTaskGroup(of: Int.self) { group in
            for _ in 0..<tasks {
                group.addTask {
                    let channel = NIOAsyncTestingChannel()  // one per task, as one per connection
                    var count = 0
                    repeat {
                        // Check the clock every 16 requests; the check is not what is measured.
                        for _ in 0..<16 {
                            let answer = try await oneRequest(responder, path: path, channel: channel, logger: logger)
                            guard answer.status == .ok, answer.bytes == expected else {
                                fail("GET \(path) answered \(answer.status) with \(answer.bytes) bytes, expected 200 with \(expected)")
                            }
                        }
                        count += 16
                    } while ContinuousClock.now < deadline
                    return count
                }
            }
            return try await group.reduce(0, +)
        }
        let elapsed = start.duration(to: .now)
        return Double(total) / (Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18)
    }

    /// One GET through the responder, the body written to a writer that counts its bytes.
    static func oneRequest<Responder: HTTPResponder>(
        _ responder: Responder, path: String, channel: any Channel, logger: Logger
    ) async throws -> (status: HTTPResponse.Status, bytes: Int) where Responder.Context: InitializableFromSource<ApplicationRequestContextSource> {
        let head = HTTPRequest(method: .get, scheme: "http", authority: "localhost", path: path,
                               headerFields: [.accept: acceptedTypes])
        let request = Request(head: head, body: RequestBody(buffer: ByteBuffer()))
        // As Hummingbird's server does for each request: a logger carrying a new request id.
        var requestLogger = logger
        requestLogger[metadataKey: "hb.request.id"] = .stringConvertible(Hummingbird.RequestID())
        let context = Responder.Context(source: ApplicationRequestContextSource(channel: channel, logger: requestLogger))
        let response = try await responder.respond(to: request, context: context)
        let tally = Tally()
        try await response.body.write(CountingWriter(tally: tally))
        return (response.status, tally.bytes.withLock { $0 })
    }

    /// The manifest types a modern puller accepts, as bench/lib.sh sends them.
    static let acceptedTypes = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, "
        + "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json"

    static func fail(_ message: String) -> Never {
        FileHandle.standardError.write(Data((message + "\n").utf8))
        exit(2)
    }
}

/// Bytes written to one response body; each task has its own, so the lock is never contended.
final class Tally: Sendable {
    let bytes = Mutex(0)
}

struct CountingWriter: ResponseBodyWriter {
    let tally: Tally
    func write(_ buffer: ByteBuffer) async throws { tally.bytes.withLock { $0 += buffer.readableBytes } }
    func finish(_ trailingHeaders: HTTPFields?) async throws {}
}
