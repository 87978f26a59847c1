import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One HTTP/1.1 response, as it came off the wire.
struct RawResponse: Sendable, CustomStringConvertible {
    let status: Int
    let headers: [(name: String, value: String)]
    /// The body after de-chunking; for HEAD, whatever bytes followed the header block (should be none).
    let body: [UInt8]

    /// The first value of a header, case-insensitively.
    func header(_ name: String) -> String? {
        headers.first { $0.name.caseInsensitiveCompare(name) == .orderedSame }?.value
    }

    var bodyText: String { String(decoding: body, as: UTF8.self) }

    /// The `code`s of a Distribution API error envelope, `{"errors":[{"code":…}]}`; nil if the body is not one.
    var errorCodes: [String]? {
        guard let object = try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any],
              let errors = object["errors"] as? [[String: Any]] else { return nil }
        return errors.compactMap { $0["code"] as? String }
    }

    var description: String {
        let head = headers.map { "\($0.name): \($0.value)" }.joined(separator: "\n")
        return "HTTP \(status)\n\(head)\n\n\(bodyText.prefix(500))"
    }
}

/// A tiny blocking HTTP/1.1 client over a plain socket, so that tests see exactly what the server
/// sent (a HEAD response's stray body bytes included). One request per connection (`Connection: close`).
enum RawHTTP {
    static func request(
        _ method: String, port: Int, path: String,
        headers: [(String, String)] = [], timeout: Int = 15
    ) throws -> RawResponse {
        var text = "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\nUser-Agent: registry-mirror-e2e\r\nConnection: close\r\n"
        for (name, value) in headers { text += "\(name): \(value)\r\n" }
        text += "\r\n"
        let exchange = try exchange(Array(text.utf8), port: port, timeout: timeout)
        if let failure = exchange.sendFailure { throw E2EError("send to 127.0.0.1:\(port) failed: \(failure)") }
        guard exchange.ending == "eof" else {
            throw E2EError("\(method) \(path): reading the response failed (\(exchange.ending)); got \(exchange.received.count) bytes so far: \(String(decoding: exchange.received.prefix(300), as: UTF8.self))")
        }
        return try parse(exchange.received, method: method, path: path)
    }

    /// What came back for bytes sent as they are.
    struct Exchange: Sendable {
        var received: [UInt8] = []
        /// How reading ended: "eof", "timeout", or "error: errno N (…)" (a reset, say).
        var ending = ""
        /// Why sending stopped short, if it did (the server may answer and close before reading everything).
        var sendFailure: String?
    }

    /// Sends `bytes` unchanged on a fresh connection, then reads until the server closes it
    /// (or `timeout` seconds pass without data). Throws only if it cannot connect.
    static func exchange(_ bytes: [UInt8], port: Int, timeout: Int = 15) throws -> Exchange {
        let fd = try connectLoopback(port: port, timeout: timeout)
        defer { close(fd) }
        var result = Exchange()
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n < 0, errno == EINTR { continue }
            guard n > 0 else {
                result.sendFailure = "errno \(errno) after \(sent) of \(bytes.count) bytes"
                break
            }
            sent += n
        }
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n > 0 {
                result.received.append(contentsOf: buffer[0..<n])
                continue
            }
            if n == 0 {
                result.ending = "eof"
                break
            }
            let code = errno
            if code == EINTR { continue }
            result.ending = (code == EAGAIN || code == EWOULDBLOCK) ? "timeout" : "error: errno \(code) (\(String(cString: strerror(code))))"
            break
        }
        return result
    }

    static func get(port: Int, path: String, headers: [(String, String)] = []) throws -> RawResponse {
        try request("GET", port: port, path: path, headers: headers)
    }

    static func head(port: Int, path: String, headers: [(String, String)] = []) throws -> RawResponse {
        try request("HEAD", port: port, path: path, headers: headers)
    }

    /// `waiting: false`: a non-blocking socket whose handshake completes (or not) in the background.
    static func connectLoopback(port: Int, timeout: Int, waiting: Bool = true) throws -> Int32 {
        #if canImport(Glibc)
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        #else
        let fd = socket(AF_INET, SOCK_STREAM, 0)
        #endif
        guard fd >= 0 else { throw E2EError("socket() failed: errno \(errno)") }
        var tv = timeval(tv_sec: timeout, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        if !waiting { _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 || (!waiting && errno == EINPROGRESS) else {
            let code = errno
            close(fd)
            throw E2EError("connect to 127.0.0.1:\(port) failed: errno \(code)")
        }
        return fd
    }

    static func parse(_ raw: [UInt8], method: String, path: String) throws -> RawResponse {
        let separator: [UInt8] = [13, 10, 13, 10]
        guard let end = raw.firstRange(of: separator) else {
            throw E2EError("\(method) \(path): no complete header block in \(raw.count) bytes: \(String(decoding: raw.prefix(300), as: UTF8.self))")
        }
        let headText = String(decoding: raw[..<end.lowerBound], as: UTF8.self)
        var lines = headText.components(separatedBy: "\r\n")
        let statusLine = lines.removeFirst()
        let statusParts = statusLine.split(separator: " ", maxSplits: 2)
        guard statusParts.count >= 2, statusParts[0].hasPrefix("HTTP/1."), let status = Int(statusParts[1]) else {
            throw E2EError("\(method) \(path): bad status line \(statusLine)")
        }
        var headers: [(String, String)] = []
        for line in lines where !line.isEmpty {
            guard let colon = line.firstIndex(of: ":") else { throw E2EError("\(method) \(path): bad header line \(line)") }
            headers.append((String(line[..<colon]), line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)))
        }
        var body = Array(raw[end.upperBound...])
        let chunked = headers.contains { $0.0.lowercased() == "transfer-encoding" && $0.1.lowercased().contains("chunked") }
        if chunked, method != "HEAD" {
            body = try dechunk(body, context: "\(method) \(path)")
        }
        return RawResponse(status: status, headers: headers.map { (name: $0.0, value: $0.1) }, body: body)
    }

    static func dechunk(_ bytes: [UInt8], context: String) throws -> [UInt8] {
        var out: [UInt8] = []
        var index = 0
        while true {
            guard let lineEnd = bytes[index...].firstRange(of: [13, 10]) else { throw E2EError("\(context): truncated chunked body") }
            let sizeText = String(decoding: bytes[index..<lineEnd.lowerBound], as: UTF8.self)
                .split(separator: ";").first.map(String.init) ?? ""
            guard let size = Int(sizeText.trimmingCharacters(in: .whitespaces), radix: 16) else {
                throw E2EError("\(context): bad chunk size \(sizeText)")
            }
            index = lineEnd.upperBound
            if size == 0 { return out }
            guard index + size + 2 <= bytes.count else { throw E2EError("\(context): truncated chunk") }
            out.append(contentsOf: bytes[index..<(index + size)])
            index += size + 2
        }
    }
}
