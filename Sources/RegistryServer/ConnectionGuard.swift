#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Logging
import NIOCore

/// Keeps the listening socket sane when connections or file descriptors run out. Installed
/// first in the server channel's pipeline, so accepted channels and accept errors reach it
/// before Hummingbird's handlers and NIO's `AcceptHandler`.
///
/// - Above `maxConnections` live connections, a new one is closed as soon as it is accepted:
///   its client sees a clean close at once instead of waiting in the backlog.
/// - Accept failing with EMFILE or ENFILE: NIO keeps the listening socket registered with its
///   read pending, so epoll wakes it again at once and it spins on `accept4` (the
///   `AcceptBackoffHandler` it installs only delays the *next* `read()`, which never comes
///   while that read is pending). Here, the waiting connections are accepted into a reserve
///   descriptor one at a time and closed at once, until the backlog is empty; then epoll has
///   nothing to report. If a descriptor cannot be had even so, accepting pauses for `backoff`.
/// - Both are logged at most once per `logInterval`, with how often they happened.
final class ConnectionGuard: ChannelInboundHandler {
    typealias InboundIn = any Channel
    typealias InboundOut = any Channel

    private let maxConnections: Int
    private let backoff: TimeAmount
    private let logger: Logger
    /// The listening socket's descriptor (NIO does not hand it out), or -1 if not found.
    private let listener: CInt
    private var live = 0
    /// An open descriptor on /dev/null, given up for a moment to shed a connection; -1 if lost.
    private var reserve: CInt
    private var paused = false
    private var resumeLater: Scheduled<Void>?
    private var outOfDescriptors: ThrottledLog
    private var overLimit: ThrottledLog

    init(maxConnections: Int, port: Int?, backoff: TimeAmount = .milliseconds(100), logInterval: TimeAmount = .seconds(10), logger: Logger) {
        self.maxConnections = maxConnections
        self.backoff = backoff
        self.logger = logger
        self.listener = port.map(Self.listeningDescriptor) ?? -1
        self.reserve = Self.openReserve()
        self.outOfDescriptors = ThrottledLog(interval: logInterval)
        self.overLimit = ThrottledLog(interval: logInterval)
        if listener < 0 {
            logger.warning("the listening socket's descriptor was not found: when descriptors run out, waiting clients are not closed at once")
        }
    }

    deinit {
        if reserve >= 0 { close(reserve) }
    }

    static func openReserve() -> CInt { open("/dev/null", O_RDONLY | O_CLOEXEC) }

    /// The descriptor of this process's listening TCP socket on `port`, found in /proc/self/fd.
    static func listeningDescriptor(port: Int) -> CInt {
        guard let directory = opendir("/proc/self/fd") else { return -1 }
        defer { closedir(directory) }
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard let fd = CInt(name) else { continue }
            var accepting: CInt = 0
            var size = socklen_t(MemoryLayout<CInt>.size)
            guard getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &size) == 0, accepting != 0 else { continue }
            var address = sockaddr_storage()
            var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let named = withUnsafeMutablePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
            }
            guard named == 0 else { continue }
            let bound: UInt16
            switch CInt(address.ss_family) {
            case AF_INET: bound = withUnsafeBytes(of: address) { $0.load(as: sockaddr_in.self).sin_port }
            case AF_INET6: bound = withUnsafeBytes(of: address) { $0.load(as: sockaddr_in6.self).sin6_port }
            default: continue
            }
            if Int(UInt16(bigEndian: bound)) == port { return fd }
        }
        return -1
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let child = unwrapInboundIn(data)
        guard live < maxConnections else {
            child.close(promise: nil)
            note(\.overLimit, context)
            return
        }
        live += 1
        child.closeFuture.hop(to: context.eventLoop).assumeIsolated().whenComplete { _ in self.live -= 1 }
        context.fireChannelRead(data)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard let error = error as? IOError, error.errnoCode == EMFILE || error.errnoCode == ENFILE else {
            context.fireErrorCaught(error)
            return
        }
        // Not forwarded: NIO's AcceptBackoffHandler would delay the next accept by a second.
        let drained = shedWaitingConnections()
        note(\.outOfDescriptors, context)
        if drained { return }
        pause(context)
        resumeLater?.cancel()
        resumeLater = context.eventLoop.assumeIsolated().scheduleTask(in: backoff) {
            self.resumeLater = nil
            if self.reserve < 0 { self.reserve = Self.openReserve() }
            self.resume(context)
        }
    }

    /// Accepts each waiting connection into the reserve's descriptor and closes it at once.
    /// True once the backlog is empty; false if a descriptor could not be had.
    private func shedWaitingConnections() -> Bool {
        guard listener >= 0 else { return false }
        while reserve >= 0 {
            close(reserve)
            let fd = accept(listener, nil, nil)  // the listening socket is non-blocking
            let failure = errno
            if fd >= 0 {
                close(fd)
                outOfDescriptors.shed += 1
            }
            // Taken back at once, before another thread can take the descriptor.
            reserve = Self.openReserve()
            if fd < 0, failure != ECONNABORTED, failure != EINTR { return failure == EAGAIN || failure == EWOULDBLOCK }
        }
        return false
    }

    func channelInactive(context: ChannelHandlerContext) {
        resumeLater?.cancel()
        resumeLater = nil
        context.fireChannelInactive()
    }

    /// Stops accepting: with autoRead off, NIO takes the listening socket out of epoll.
    private func pause(_ context: ChannelHandlerContext) {
        guard !paused else { return }
        paused = true
        try? context.channel.syncOptions?.setOption(ChannelOptions.autoRead, value: false)
    }

    private func resume(_ context: ChannelHandlerContext) {
        guard paused else { return }
        paused = false
        resumeLater?.cancel()
        resumeLater = nil
        try? context.channel.syncOptions?.setOption(ChannelOptions.autoRead, value: true)
    }

    /// Logs the first occurrence at once, then one line per interval with the count since.
    private func note(_ which: ReferenceWritableKeyPath<ConnectionGuard, ThrottledLog>, _ context: ChannelHandlerContext) {
        self[keyPath: which].count += 1
        let now = NIODeadline.now()
        if now >= self[keyPath: which].nextLog {
            log(which)
        } else if !self[keyPath: which].flushScheduled {
            self[keyPath: which].flushScheduled = true
            context.eventLoop.assumeIsolated().scheduleTask(deadline: self[keyPath: which].nextLog) {
                self[keyPath: which].flushScheduled = false
                if self[keyPath: which].count > 0 { self.log(which) }
            }
        }
    }

    private func log(_ which: ReferenceWritableKeyPath<ConnectionGuard, ThrottledLog>) {
        let entry = self[keyPath: which]
        let metadata: Logger.Metadata = ["http.connections": "\(live)", "http.max_connections": "\(maxConnections)"]
        if which == \.outOfDescriptors {
            logger.warning("out of file descriptors: accept failed \(entry.count) times; \(entry.shed) new connections closed at once",
                           metadata: metadata)
        } else {
            logger.warning("at http.max_connections: \(entry.count) new connections closed at once", metadata: metadata)
        }
        self[keyPath: which].count = 0
        self[keyPath: which].shed = 0
        self[keyPath: which].nextLog = .now() + entry.interval
    }
}

/// Counts of one kind of event since it was last logged, and when it may be logged next.
struct ThrottledLog {
    let interval: TimeAmount
    var count = 0
    var shed = 0
    var nextLog = NIODeadline.uptimeNanoseconds(0)
    var flushScheduled = false
}

@available(*, unavailable)
extension ConnectionGuard: Sendable {}
