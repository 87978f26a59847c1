import CCurl
import Foundation
import Synchronization

/// One HTTP exchange as the upstream client needs it: method, URL, headers; no request body.
public struct HTTPExchange: Sendable {
    public var method: String
    public var url: URL
    public var headers: [(String, String)]

    public init(method: String, url: URL, headers: [(String, String)] = []) {
        self.method = method
        self.url = url
        self.headers = headers
    }
}

/// A response head: status and headers (names lowercased; repeated names keep every value).
public struct ResponseHead: Sendable {
    public var status: Int
    public var headers: [(String, String)]

    public func header(_ name: String) -> String? {
        let lower = name.lowercased()
        return headers.first { $0.0 == lower }?.1
    }

    public func headers(_ name: String) -> [String] {
        let lower = name.lowercased()
        return headers.filter { $0.0 == lower }.map(\.1)
    }

    public var contentLength: Int64? { header("content-length").flatMap { Int64($0.trimmingCharacters(in: .whitespaces)) } }
}

/// Limits of one transfer.
public struct TransferLimits: Sendable {
    /// Connecting (TCP and TLS) must finish within this.
    public var connectTimeout: Duration = .seconds(10)
    /// The response head must arrive within this after the request starts. Below
    /// containerd's 30 s, so a hung upstream fails the request before the client gives up.
    public var headerTimeout: Duration = .seconds(15)
    /// A body slower than `lowSpeedBytes` per second for `lowSpeedTime` is abandoned.
    public var lowSpeedBytes = 1024
    public var lowSpeedTime: Duration = .seconds(30)
    /// Verify the upstream's TLS certificate.
    public var verifyTLS = true
    /// A CA bundle to verify with instead of the system's.
    public var caFile: String?

    public init() {}
}

/// Receives a transfer's response as it arrives, on the transfer's thread.
public protocol TransferSink: AnyObject, Sendable {
    /// The final response head (after any 1xx). Return false to have the body discarded
    /// (it is drained, up to 1 MiB, so the connection can be reused).
    func head(_ head: ResponseHead) -> Bool
    /// A piece of the body. Throwing stops the transfer; the error is rethrown by `perform`.
    func body(_ chunk: UnsafeRawBufferPointer) throws
}

/// Why a transfer failed below HTTP: no answer, or an answer cut short.
public struct TransportError: Error, Sendable, CustomStringConvertible, CustomDebugStringConvertible {
    public enum Kind: Sendable { case connect, timeout, reset, aborted, other, busy }
    public let kind: Kind
    public let message: String
    /// libcurl's code for the failure, when libcurl reported one.
    public var curlCode: Int?
    /// The upstream had answered before the failure (this response's head, then a body cut or
    /// too slow; or a redirect to a host that failed): it is alive, if unwell.
    public var afterAnswer = false
    public var description: String { message }
    public var debugDescription: String { curlCode.map { "\(message) (curl error \($0))" } ?? message }
}

/// Runs libcurl transfers on dedicated threads, never on the Swift concurrency pool, and
/// reuses easy handles (and so their connections, TLS sessions and HTTP/2 streams).
///
/// libcurl's `curl_easy_perform` blocks, and the cooperative pool has only as many
/// threads as cores (2 here); a blocked pool thread stalls every request. At most
/// `maxConcurrent` transfers run at once; later ones wait for a slot.
public final class CurlTransport: Sendable {
    private let handles = Mutex<[CurlHandle]>([])
    private let slots: AsyncSemaphore
    private let maxConcurrent: Int

    public init(maxConcurrent: Int = 64) {
        self.maxConcurrent = maxConcurrent
        slots = AsyncSemaphore(maxConcurrent)
        Self.globalInit
    }

    deinit {
        for handle in handles.withLock({ $0 }) { curl_easy_cleanup(handle.raw) }
    }

    private static let globalInit: Void = { curl_global_init(Int(CURL_GLOBAL_DEFAULT)) }()

    /// Performs one exchange. Redirects are not followed here (the caller decides, so that
    /// credentials never follow a redirect to another host).
    public func perform(_ exchange: HTTPExchange, limits: TransferLimits, sink: any TransferSink) async throws -> ResponseHead {
        // The head's deadline counts the wait for a slot: a client waits for both, and with
        // every slot busy the wait alone could outlast containerd's 30 s.
        let deadline = ContinuousClock.now + limits.headerTimeout
        guard await slots.wait(until: deadline) else {
            try Task.checkCancellation()
            throw TransportError(kind: .busy, message: "no upstream transfer slot came free within \(limits.headerTimeout) (\(maxConcurrent) transfers busy)")
        }
        defer { slots.signal() }
        let context = TransferContext(sink: sink, headerDeadline: deadline)
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<ResponseHead, any Error>) in
                let thread = Thread { [self] in
                    continuation.resume(with: Result { try self.run(exchange, limits: limits, context: context) })
                }
                thread.name = "curl-transfer"
                thread.stackSize = 512 << 10
                thread.start()
            }
        } onCancel: {
            context.cancelled.store(true, ordering: .relaxed)
        }
    }

    private func takeHandle() -> UnsafeMutableRawPointer {
        if let handle = handles.withLock({ $0.popLast() }) {
            curl_easy_reset(handle.raw)
            return handle.raw
        }
        return curl_easy_init()!
    }

    private func run(_ exchange: HTTPExchange, limits: TransferLimits, context: TransferContext) throws -> ResponseHead {
        let handle = takeHandle()
        var reusable = true
        defer {
            if reusable { handles.withLock { $0.append(CurlHandle(raw: handle)) } } else { curl_easy_cleanup(handle) }
        }
        var list: UnsafeMutablePointer<curl_slist>?
        for (name, value) in exchange.headers { list = curl_slist_append(list, "\(name): \(value)") }
        // curl adds "Expect" and "Accept: */*" by default; an explicit empty Accept is ours to set.
        defer { curl_slist_free_all(list) }
        rm_curl_setopt_str(handle, CURLOPT_URL, exchange.url.absoluteString)
        if exchange.method == "HEAD" {
            rm_curl_setopt_long(handle, CURLOPT_NOBODY, 1)
        } else if exchange.method != "GET" {
            rm_curl_setopt_str(handle, CURLOPT_CUSTOMREQUEST, exchange.method)
        }
        rm_curl_setopt_slist(handle, CURLOPT_HTTPHEADER, list)
        // Every transfer (API, token service, a redirect's target) says who is calling.
        rm_curl_setopt_str(handle, CURLOPT_USERAGENT, RegistryMirrorVersion.userAgent)
        rm_curl_setopt_long(handle, CURLOPT_FOLLOWLOCATION, 0)
        // Defence in depth behind `RedirectPolicy`: this handle speaks nothing but HTTP(S),
        // whatever URL reaches it. Refuse to run on a libcurl that cannot promise that.
        guard rm_curl_setopt_str(handle, CURLOPT_PROTOCOLS_STR, Self.protocols) == CURLE_OK,
              rm_curl_setopt_str(handle, CURLOPT_REDIR_PROTOCOLS_STR, Self.protocols) == CURLE_OK else {
            throw TransportError(kind: .other, message: "libcurl cannot be limited to http and https (it needs 7.85 or later)")
        }
        rm_curl_setopt_long(handle, CURLOPT_NOSIGNAL, 1)
        rm_curl_setopt_long(handle, CURLOPT_HTTP_VERSION, Int(CURL_HTTP_VERSION_2TLS))
        rm_curl_setopt_long(handle, CURLOPT_BUFFERSIZE, 512 << 10)
        rm_curl_setopt_long(handle, CURLOPT_TCP_KEEPALIVE, 1)
        rm_curl_setopt_long(handle, CURLOPT_CONNECTTIMEOUT_MS, Int(limits.connectTimeout.milliseconds))
        rm_curl_setopt_long(handle, CURLOPT_LOW_SPEED_LIMIT, limits.lowSpeedBytes)
        rm_curl_setopt_long(handle, CURLOPT_LOW_SPEED_TIME, max(1, Int(limits.lowSpeedTime.milliseconds / 1000)))
        rm_curl_setopt_long(handle, CURLOPT_SSL_VERIFYPEER, limits.verifyTLS ? 1 : 0)
        rm_curl_setopt_long(handle, CURLOPT_SSL_VERIFYHOST, limits.verifyTLS ? 2 : 0)
        if let ca = limits.caFile { rm_curl_setopt_str(handle, CURLOPT_CAINFO, ca) }
        // Never decode: blobs are verified byte for byte.
        rm_curl_setopt_ptr(handle, CURLOPT_ACCEPT_ENCODING, nil)
        let unmanaged = Unmanaged.passRetained(context)
        defer { unmanaged.release() }
        let pointer = unmanaged.toOpaque()
        rm_curl_setopt_header(handle, curlHeaderCallback)
        rm_curl_setopt_ptr(handle, CURLOPT_HEADERDATA, pointer)
        rm_curl_setopt_write(handle, curlWriteCallback)
        rm_curl_setopt_ptr(handle, CURLOPT_WRITEDATA, pointer)
        rm_curl_setopt_xferinfo(handle, curlProgressCallback)
        rm_curl_setopt_ptr(handle, CURLOPT_XFERINFODATA, pointer)
        rm_curl_setopt_long(handle, CURLOPT_NOPROGRESS, 0)

        let code = curl_easy_perform(handle)
        if let error = context.sinkError { reusable = false; throw error }
        if code != CURLE_OK {
            reusable = false
            if context.discarding, let head = context.head { return head }
            var error = Self.transportError(code, context: context, url: exchange.url)
            error.curlCode = Int(code.rawValue)
            error.afterAnswer = context.head != nil
            throw error
        }
        guard let head = context.head else {
            throw TransportError(kind: .other, message: "\(exchange.url.host ?? "upstream") sent no response")
        }
        return head
    }

    /// The protocols a handle may speak, for the request and (were it to follow one) a redirect.
    static let protocols = RedirectPolicy.schemes.sorted().joined(separator: ",")

    static func transportError(_ code: CURLcode, context: TransferContext, url: URL) -> TransportError {
        let host = url.host.map { h in url.port.map { "\(h):\($0)" } ?? h } ?? "upstream"
        let text = String(cString: curl_easy_strerror(code))
        switch code {
        case CURLE_COULDNT_CONNECT, CURLE_COULDNT_RESOLVE_HOST, CURLE_COULDNT_RESOLVE_PROXY:
            return TransportError(kind: .connect, message: "cannot connect to \(host): \(text)")
        case CURLE_OPERATION_TIMEDOUT:
            return TransportError(kind: .timeout, message: "\(host) timed out: \(text)")
        case CURLE_ABORTED_BY_CALLBACK:
            if context.cancelled.load(ordering: .relaxed) { return TransportError(kind: .aborted, message: "transfer from \(host) cancelled") }
            return TransportError(kind: .timeout, message: "\(host) sent no response headers in time")
        case CURLE_UNSUPPORTED_PROTOCOL:
            return TransportError(kind: .other, message: "\(url.scheme ?? "a missing") URL not fetched: the upstream client speaks only http and https")
        case CURLE_RECV_ERROR, CURLE_SEND_ERROR, CURLE_PARTIAL_FILE, CURLE_GOT_NOTHING:
            return TransportError(kind: .reset, message: "connection to \(host) failed mid-transfer: \(text)")
        default:
            return TransportError(kind: .other, message: "transfer from \(host) failed: \(text)")
        }
    }
}

/// An idle easy handle. Owned by one transfer at a time, so sharing it across threads is safe.
struct CurlHandle: @unchecked Sendable {
    let raw: UnsafeMutableRawPointer
}

/// Per-transfer state the C callbacks reach through their user-data pointer. Touched only
/// by the transfer's thread, except `cancelled`.
final class TransferContext: @unchecked Sendable {
    let sink: any TransferSink
    let headerDeadline: ContinuousClock.Instant
    let cancelled = Atomic<Bool>(false)
    var pending = ResponseHead(status: 0, headers: [])
    var head: ResponseHead?
    var sinkError: (any Error)?
    var discarding = false
    var discarded = 0

    init(sink: any TransferSink, headerDeadline: ContinuousClock.Instant) {
        self.sink = sink
        self.headerDeadline = headerDeadline
    }
}

private func curlHeaderCallback(_ data: UnsafeMutablePointer<CChar>?, _ size: Int, _ count: Int, _ user: UnsafeMutableRawPointer?) -> Int {
    let length = size * count
    guard let data, let user else { return 0 }
    let context = Unmanaged<TransferContext>.fromOpaque(user).takeUnretainedValue()
    let line = String(decoding: UnsafeRawBufferPointer(start: data, count: length), as: UTF8.self)
    if line.hasPrefix("HTTP/") {
        let parts = line.split(separator: " ", maxSplits: 2)
        context.pending = ResponseHead(status: parts.count > 1 ? Int(parts[1]) ?? 0 : 0, headers: [])
    } else if line == "\r\n" || line == "\n" {
        // End of a head; 1xx heads are followed by the real one.
        if context.pending.status >= 200 {
            context.head = context.pending
            context.discarding = !context.sink.head(context.pending)
        }
    } else if let colon = line.firstIndex(of: ":") {
        let name = line[..<colon].lowercased()
        let value = line[line.index(after: colon)...].trimmingCharacters(in: .whitespacesAndNewlines)
        context.pending.headers.append((name, value))
    }
    return length
}

private func curlWriteCallback(_ data: UnsafeMutablePointer<CChar>?, _ size: Int, _ count: Int, _ user: UnsafeMutableRawPointer?) -> Int {
    let length = size * count
    guard let data, let user else { return 0 }
    let context = Unmanaged<TransferContext>.fromOpaque(user).takeUnretainedValue()
    if context.discarding {
        context.discarded += length
        return context.discarded > 1 << 20 ? 0 : length
    }
    do {
        try context.sink.body(UnsafeRawBufferPointer(start: data, count: length))
    } catch {
        context.sinkError = error
        return 0
    }
    return length
}

private func curlProgressCallback(_ user: UnsafeMutableRawPointer?, _ dltotal: curl_off_t, _ dlnow: curl_off_t, _ ultotal: curl_off_t, _ ulnow: curl_off_t) -> Int32 {
    guard let user else { return 0 }
    let context = Unmanaged<TransferContext>.fromOpaque(user).takeUnretainedValue()
    if context.cancelled.load(ordering: .relaxed) { return 1 }
    if context.head == nil, ContinuousClock.now > context.headerDeadline { return 1 }
    return 0
}

extension Duration {
    var milliseconds: Int64 { components.seconds * 1000 + components.attoseconds / 1_000_000_000_000_000 }
}
