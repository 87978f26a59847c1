import CCurl
import ContentStore
import Foundation
import OCI
import Synchronization

/// One S3 REST call: method, object key (nil: the bucket), query, extra headers, body.
struct S3Request: Sendable {
    var method: String
    var key: String?
    var query: [(String, String)] = []
    var headers: [(String, String)] = []
    var body: [UInt8] = []
    /// The whole exchange's limit (a readiness check); nil: only the stall limits apply.
    var timeout: Duration?
}

/// An S3 answer: status, headers (names lowercased), and the body unless a sink took it.
struct S3Response: Sendable {
    var status: Int
    var headers: [String: String]
    var body: [UInt8]

    var text: String { String(decoding: body, as: UTF8.self) }

    /// The answer as a store error, with S3's own `<Code>` and `<Message>` when it sent them.
    func error(_ what: String, file: String = #fileID, line: Int = #line) -> StoreError {
        let code = S3XML.value("Code", in: text).map { " \($0)" } ?? ""
        let message = S3XML.value("Message", in: text).map { ": \($0)" } ?? ""
        let kind: StoreError.Code = status == 404 ? .notFound : .io
        return StoreError(kind, "S3 \(what): HTTP \(status)\(code)\(message)", file: file, line: line)
    }
}

/// Takes a 2xx body piece by piece on the transfer thread, given the status; false stops it.
typealias S3BodySink = @Sendable (_ status: Int, _ bytes: UnsafeRawBufferPointer) -> Bool

/// Signed S3 calls over libcurl. Each request is signed by libcurl itself
/// (`CURLOPT_AWS_SIGV4` with the access key as user and the secret as password), so there is
/// no SDK and no signing code of ours; the payload hash is ours, sent as
/// `x-amz-content-sha256`, which S3 wants on every request.
///
/// `perform` blocks its thread (a writer's, which may block); `send` runs it on a thread of its
/// own, never on the cooperative pool. Easy handles are pooled, keeping their connections.
final class S3Connection: Sendable {
    let location: S3Location
    let credentials: S3Credentials
    private let handles = Mutex<[S3EasyHandle]>([])
    private let signing: String

    init(location: S3Location, credentials: S3Credentials) {
        self.location = location
        self.credentials = credentials
        self.signing = "aws:amz:\(location.region):s3"
        Self.globalInit
    }

    deinit {
        for handle in handles.withLock({ $0 }) { curl_easy_cleanup(handle.raw) }
    }

    private static let globalInit: Void = { curl_global_init(Int(CURL_GLOBAL_DEFAULT)) }()
    private static let emptyPayloadHash = DigestHasher.digest(of: [UInt8]()).hex

    /// Runs `request` on a thread of its own.
    func send(_ request: S3Request, bodyLimit: Int = 1 << 20) async throws(StoreError) -> S3Response {
        let result = await withCheckedContinuation { (continuation: CheckedContinuation<Result<S3Response, StoreError>, Never>) in
            let thread = Thread { [self] in
                continuation.resume(returning: Result { () throws(StoreError) in try perform(request, bodyLimit: bodyLimit) })
            }
            thread.name = "s3-transfer"
            thread.stackSize = 512 << 10
            thread.start()
        }
        return try result.get()
    }

    /// Runs `request` on the calling thread. A 2xx body goes to `sink` when there is one, else
    /// it is kept up to `bodyLimit` bytes (more is a `.tooLarge` error); an error's body is kept
    /// (up to 64 KiB) for its message.
    func perform(_ request: S3Request, bodyLimit: Int = 1 << 20, sink: S3BodySink? = nil) throws(StoreError) -> S3Response {
        let handle = takeHandle()
        var reusable = true
        defer {
            if reusable { handles.withLock { $0.append(S3EasyHandle(raw: handle)) } } else { curl_easy_cleanup(handle) }
        }
        let context = S3ExchangeContext(sink: sink, bodyLimit: bodyLimit)
        let what = "\(request.method) \(request.key ?? location.bucket)"
        var list: UnsafeMutablePointer<curl_slist>?
        defer { curl_slist_free_all(list) }
        let payloadHash = request.body.isEmpty ? Self.emptyPayloadHash : DigestHasher.digest(of: request.body).hex
        var headers = request.headers + [("x-amz-content-sha256", payloadHash)]
        if let token = credentials.sessionToken { headers.append(("x-amz-security-token", token)) }
        // Every header we set is signed: libcurl puts each one in the canonical request, even
        // one that only removes a header ("Expect:"), which then breaks the signature.
        for (name, value) in headers { list = curl_slist_append(list, "\(name): \(value)") }

        rm_curl_setopt_str(handle, CURLOPT_URL, location.url(key: request.key, query: request.query))
        guard rm_curl_setopt_str(handle, CURLOPT_PROTOCOLS_STR, "http,https") == CURLE_OK,
              rm_curl_setopt_str(handle, CURLOPT_AWS_SIGV4, signing) == CURLE_OK else {
            throw StoreError(.io, "libcurl cannot sign S3 requests (CURLOPT_AWS_SIGV4 needs 7.75 or later, http-only 7.85)")
        }
        rm_curl_setopt_str(handle, CURLOPT_USERNAME, credentials.accessKeyID)
        rm_curl_setopt_str(handle, CURLOPT_PASSWORD, credentials.secretAccessKey)
        rm_curl_setopt_long(handle, CURLOPT_NOSIGNAL, 1)
        rm_curl_setopt_long(handle, CURLOPT_TCP_KEEPALIVE, 1)
        rm_curl_setopt_long(handle, CURLOPT_CONNECTTIMEOUT_MS, 10_000)
        // A stalled server, not a slow one, is abandoned; the reader resumes where it was.
        rm_curl_setopt_long(handle, CURLOPT_LOW_SPEED_LIMIT, 1)
        rm_curl_setopt_long(handle, CURLOPT_LOW_SPEED_TIME, 60)
        rm_curl_setopt_ptr(handle, CURLOPT_ACCEPT_ENCODING, nil)
        if let timeout = request.timeout {
            let ms = max(1, Int(timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000))
            rm_curl_setopt_long(handle, CURLOPT_TIMEOUT_MS, ms)
            rm_curl_setopt_long(handle, CURLOPT_CONNECTTIMEOUT_MS, ms)
        }
        switch request.method {
        case "GET": break
        case "HEAD": rm_curl_setopt_long(handle, CURLOPT_NOBODY, 1)
        default: rm_curl_setopt_str(handle, CURLOPT_CUSTOMREQUEST, request.method)
        }
        let unmanaged = Unmanaged.passRetained(context)
        defer { unmanaged.release() }
        rm_curl_setopt_header(handle, s3HeaderCallback)
        rm_curl_setopt_ptr(handle, CURLOPT_HEADERDATA, unmanaged.toOpaque())
        rm_curl_setopt_write(handle, s3WriteCallback)
        rm_curl_setopt_ptr(handle, CURLOPT_WRITEDATA, unmanaged.toOpaque())

        // An empty body still needs an address: a null POSTFIELDS would make libcurl read stdin.
        let storage = request.body.isEmpty ? [0] : request.body
        let code: CURLcode = storage.withUnsafeBytes { body in
            if request.method == "PUT" || request.method == "POST" {
                // The body goes out from our buffer (no copy); libcurl hashes the same bytes
                // for the signature when it is older than the x-amz-content-sha256 support.
                rm_curl_setopt_off(handle, CURLOPT_POSTFIELDSIZE_LARGE, curl_off_t(request.body.count))
                rm_curl_setopt_ptr(handle, CURLOPT_POSTFIELDS, UnsafeMutableRawPointer(mutating: body.baseAddress!))
                // Not the form type libcurl would otherwise send with a body.
                list = curl_slist_append(list, "Content-Type: application/octet-stream")
            }
            rm_curl_setopt_slist(handle, CURLOPT_HTTPHEADER, list)
            return curl_easy_perform(handle)
        }
        if code != CURLE_OK {
            reusable = false
            if context.overLimit { throw StoreError(.tooLarge, "S3 \(what): larger than \(bodyLimit) bytes") }
            if context.stopped { throw StoreError(.io, "S3 \(what): stopped by its reader") }
            throw StoreError(.io, "S3 \(what): \(String(cString: curl_easy_strerror(code))) (curl error \(code.rawValue))")
        }
        return S3Response(status: context.status, headers: context.headers, body: context.body)
    }

    /// A presigned GET URL of `key` (see `S3Presign`), signed with this connection's credentials.
    func presignedURL(key: String, expiry: Duration, now: Date) -> String {
        S3Presign.url(location: location, key: key, credentials: credentials, expiry: expiry, now: now)
    }

    private func takeHandle() -> UnsafeMutableRawPointer {
        if let handle = handles.withLock({ $0.popLast() }) {
            curl_easy_reset(handle.raw)
            return handle.raw
        }
        return curl_easy_init()!
    }
}

/// An idle easy handle, owned by one transfer at a time.
struct S3EasyHandle: @unchecked Sendable {
    let raw: UnsafeMutableRawPointer
}

/// What the C callbacks of one transfer share; touched only by the transfer's thread.
private final class S3ExchangeContext: @unchecked Sendable {
    let sink: S3BodySink?
    let bodyLimit: Int
    var status = 0
    var headers: [String: String] = [:]
    var body: [UInt8] = []
    var overLimit = false
    var stopped = false

    init(sink: S3BodySink?, bodyLimit: Int) {
        self.sink = sink
        self.bodyLimit = bodyLimit
    }
}

private func s3HeaderCallback(_ data: UnsafeMutablePointer<CChar>?, _ size: Int, _ count: Int, _ user: UnsafeMutableRawPointer?) -> Int {
    let length = size * count
    guard let data, let user else { return 0 }
    let context = Unmanaged<S3ExchangeContext>.fromOpaque(user).takeUnretainedValue()
    let line = String(decoding: UnsafeRawBufferPointer(start: data, count: length), as: UTF8.self)
    if line.hasPrefix("HTTP/") {
        // A new head (after a 100 Continue, say) replaces the one before.
        context.status = line.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0
        context.headers = [:]
    } else if let colon = line.firstIndex(of: ":") {
        context.headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespacesAndNewlines)
    }
    return length
}

private func s3WriteCallback(_ data: UnsafeMutablePointer<CChar>?, _ size: Int, _ count: Int, _ user: UnsafeMutableRawPointer?) -> Int {
    let length = size * count
    guard let data, let user else { return 0 }
    let context = Unmanaged<S3ExchangeContext>.fromOpaque(user).takeUnretainedValue()
    let bytes = UnsafeRawBufferPointer(start: data, count: length)
    if (200..<300).contains(context.status), let sink = context.sink {
        guard sink(context.status, bytes) else { context.stopped = true; return 0 }
        return length
    }
    let limit = (200..<300).contains(context.status) ? context.bodyLimit : 64 << 10
    guard context.body.count + length <= limit else { context.overLimit = true; return 0 }
    context.body.append(contentsOf: bytes)
    return length
}

/// The little XML that S3 answers with: values of named elements, entities decoded. The
/// responses read here (lists, upload ids, errors) have flat elements without attributes.
enum S3XML {
    /// The raw contents of every `<name>…</name>` in `text`.
    static func elements(_ name: String, in text: Substring) -> [Substring] {
        let open = "<\(name)>", close = "</\(name)>"
        var found: [Substring] = []
        var rest = text[...]
        while let start = rest.range(of: open), let end = rest[start.upperBound...].range(of: close) {
            found.append(rest[start.upperBound..<end.lowerBound])
            rest = rest[end.upperBound...]
        }
        return found
    }

    /// The decoded text of the first `<name>` element.
    static func value(_ name: String, in text: some StringProtocol) -> String? {
        elements(name, in: Substring(text)).first.map { decode($0) }
    }

    static func decode(_ text: Substring) -> String {
        guard text.contains("&") else { return String(text) }
        var out = ""
        var rest = text[...]
        while let amp = rest.firstIndex(of: "&") {
            out += rest[..<amp]
            guard let semicolon = rest[amp...].firstIndex(of: ";") else { break }
            let entity = rest[rest.index(after: amp)..<semicolon]
            switch entity {
            case "amp": out += "&"
            case "lt": out += "<"
            case "gt": out += ">"
            case "quot": out += "\""
            case "apos": out += "'"
            default:
                let number = entity.hasPrefix("#x") ? UInt32(entity.dropFirst(2), radix: 16) : entity.hasPrefix("#") ? UInt32(entity.dropFirst()) : nil
                if let scalar = number.flatMap(UnicodeScalar.init) { out.unicodeScalars.append(scalar) } else { out += "&\(entity);" }
            }
            rest = rest[rest.index(after: semicolon)...]
        }
        return out + rest
    }

    static func escape(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
    }
}
