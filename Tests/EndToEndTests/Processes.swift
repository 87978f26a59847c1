import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// Why not Foundation's `Process`: on Linux it (1) spawns with the calling thread's signal mask,
// and the worker threads Swift concurrency runs on block SIGTERM, so children started from a test
// could not be stopped with SIGTERM; and (2) notices an exit only when every holder of an
// inherited socket has closed it, grandchildren included, so a child killed while its own child
// lives on is never reaped. Here: posix_spawn with an empty signal mask, default dispositions,
// a process group of its own (so the whole tree can be signalled), no inherited descriptors but
// 0–2, and waitpid on that one pid.

/// One spawned child process, reaped by us.
final class Subprocess: Sendable {
    let pid: pid_t
    let command: [String]
    /// The decoded exit status once reaped: the exit code, or 128 + signal number.
    private let status = Mutex<Int32?>(nil)

    private init(pid: pid_t, command: [String]) {
        self.pid = pid
        self.command = command
    }

    /// Starts `executable arguments…` with stdin from /dev/null and stdout/stderr into the given files.
    static func spawn(
        _ executable: String, _ arguments: [String],
        environment: [String: String]? = nil,
        stdout: String, stderr: String
    ) throws -> Subprocess {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, stdout, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_addopen(&actions, 2, stderr, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        if let closeFrom = Self.addCloseFrom {
            // Nothing of the test process's leaks into the child but 0–2.
            _ = closeFrom(&actions, 3)
        }

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        var allSignals = sigset_t()
        sigfillset(&allSignals)
        sigdelset(&allSignals, SIGKILL)
        sigdelset(&allSignals, SIGSTOP)
        posix_spawnattr_setsigdefault(&attributes, &allSignals)
        posix_spawnattr_setpgroup(&attributes, 0)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP))

        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        let merged = ProcessInfo.processInfo.environment.merging(environment ?? [:]) { $1 }
        let envp = merged.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { for pointer in envp { free(pointer) } }

        var pid = pid_t()
        let result = posix_spawn(&pid, executable, &actions, &attributes, argv, envp)
        guard result == 0 else {
            throw E2EError("posix_spawn \(executable) failed: \(String(cString: strerror(result)))")
        }
        return Subprocess(pid: pid, command: [executable] + arguments)
    }

    /// glibc ≥ 2.34's `posix_spawn_file_actions_addclosefrom_np`, which Swift's Glibc module does not export.
    private typealias AddCloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
    private static let addCloseFrom: AddCloseFrom? = {
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addclosefrom_np") else { return nil }
        return unsafeBitCast(symbol, to: AddCloseFrom.self)
    }()

    /// Reaps the child if it has exited; its decoded status then, else nil. Never blocks.
    func poll() -> Int32? {
        status.withLock { status in
            if let status { return status }
            var raw: Int32 = 0
            let result = waitpid(pid, &raw, WNOHANG)
            guard result == pid else {
                if result < 0, errno == ECHILD { status = -1 }  // not ours any more: treat as gone
                return status
            }
            let signal = raw & 0x7f
            status = signal == 0 ? (raw >> 8) & 0xff : 128 + signal
            return status
        }
    }

    var hasExited: Bool { poll() != nil }

    /// Waits up to `timeout` for the exit (polling every 10 ms); the status, or nil if still running.
    func wait(timeout: Duration) async -> Int32? {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while true {
            if let status = poll() { return status }
            if clock.now >= deadline { return nil }
            try? await Task.sleep(for: .milliseconds(10))
        }
    }

    /// Sends `signal` to the child's whole process group (it and anything it started).
    func signalGroup(_ signal: Int32) {
        guard !hasExited else { return }
        if kill(-pid, signal) != 0 { kill(pid, signal) }
    }

    /// SIGKILL to the group, then waits for the exit (SIGKILL cannot be ignored).
    func killAndReap() async -> Int32? {
        signalGroup(SIGKILL)
        return await wait(timeout: .seconds(10))
    }
}

// MARK: - Running commands

/// What a finished command did.
struct CommandResult: Sendable {
    let command: [String]
    let status: Int32
    let timedOut: Bool
    let stdoutData: Data
    let stderrData: Data

    var stdout: String { String(decoding: stdoutData, as: UTF8.self) }
    var stderr: String { String(decoding: stderrData, as: UTF8.self) }
    var succeeded: Bool { status == 0 && !timedOut }

    /// For failure messages: the command, how it ended, and the tail of its output.
    var summary: String {
        let how = timedOut ? "timed out (killed)" : "exit status \(status)"
        return "`\(command.joined(separator: " "))` \(how)\n--- stdout ---\n\(stdout.suffix(3000))\n--- stderr ---\n\(stderr.suffix(3000))"
    }
}

enum Command {
    static let defaultTimeout: Duration = .seconds(120)

    /// Runs `program args…` to completion, stdout/stderr captured through files (no pipe
    /// deadlocks), killed (with its process group) if it outlives `timeout`.
    static func run(
        _ program: String, _ arguments: [String],
        environment: [String: String]? = nil,
        timeout: Duration = defaultTimeout
    ) async throws -> CommandResult {
        let executable = try TestPaths.executable(program)
        let scratch = try TemporaryDirectory(prefix: "registry-mirror-e2e-cmd")
        defer { scratch.remove() }
        let outURL = scratch.url.appendingPathComponent("stdout")
        let errURL = scratch.url.appendingPathComponent("stderr")
        let child = try Subprocess.spawn(executable, arguments, environment: environment, stdout: outURL.path, stderr: errURL.path)
        var status = await child.wait(timeout: timeout)
        let timedOut = status == nil
        if timedOut {
            Progress.step("timed out after \(timeout), killing: \(([program] + arguments).joined(separator: " "))")
            status = await child.killAndReap()
        }
        return CommandResult(
            command: [program] + arguments,
            status: status ?? -1,
            timedOut: timedOut,
            stdoutData: (try? Data(contentsOf: outURL)) ?? Data(),
            stderrData: (try? Data(contentsOf: errURL)) ?? Data())
    }

    /// Like `run`, but throws with the command's output unless it exited 0.
    @discardableResult
    static func check(
        _ program: String, _ arguments: [String],
        environment: [String: String]? = nil,
        timeout: Duration = defaultTimeout
    ) async throws -> CommandResult {
        let result = try await run(program, arguments, environment: environment, timeout: timeout)
        guard result.succeeded else { throw E2EError("command failed: \(result.summary)") }
        return result
    }
}

// MARK: - Long-running children

/// A server process started in the background, its output going to log files. Stopped with
/// SIGTERM (then SIGKILL) to its process group by `stop()`, or at the latest on deinit.
///
/// It runs under `timeout(1)` with a generous lifetime cap, so that even if the test process
/// itself crashes the server does not outlive it by much. After a SIGTERM, `timeout` allows
/// 30 s before its SIGKILL: a server drains its downloads for up to 10 s (`ShutdownTests`).
final class ChildProcess: Sendable {
    static let lifetimeCap = 900  // seconds

    let name: String
    let stdoutURL: URL
    let stderrURL: URL
    private let child: Subprocess
    private let stopped = Mutex(false)

    init(name: String, program: String, arguments: [String], logDirectory: URL, environment: [String: String]? = nil) throws {
        self.name = name
        let executable = try TestPaths.executable(program)
        let timeoutProgram = try TestPaths.executable("timeout")
        try FileManager.default.createDirectory(at: logDirectory, withIntermediateDirectories: true)
        stdoutURL = logDirectory.appendingPathComponent("\(name).stdout.log")
        stderrURL = logDirectory.appendingPathComponent("\(name).stderr.log")
        child = try Subprocess.spawn(
            timeoutProgram, ["--kill-after=30", String(Self.lifetimeCap), executable] + arguments,
            environment: environment, stdout: stdoutURL.path, stderr: stderrURL.path)
    }

    var pid: Int32 { child.pid }
    var isRunning: Bool { !child.hasExited }
    var terminationStatus: Int32? { child.poll() }

    var stdout: String { (try? String(contentsOf: stdoutURL, encoding: .utf8)) ?? "" }
    var stderr: String { (try? String(contentsOf: stderrURL, encoding: .utf8)) ?? "" }

    /// SIGTERM, up to `grace` to exit, then SIGKILL. Idempotent.
    func stop(grace: Duration = .seconds(10)) async {
        let first = stopped.withLock { stopped -> Bool in
            defer { stopped = true }
            return !stopped
        }
        guard first, !child.hasExited else { return }
        child.signalGroup(SIGTERM)
        if await child.wait(timeout: grace) == nil {
            Progress.step("\(name) (pid \(pid)) did not exit within \(grace) of SIGTERM; sending SIGKILL")
            _ = await child.killAndReap()
        }
    }

    /// SIGTERM, then up to `timeout` for the process to exit: its exit status, or nil if it
    /// was still running then (it is then killed). Idempotent with `stop()`.
    func terminate(timeout: Duration) async -> Int32? {
        stopped.withLock { $0 = true }
        guard !child.hasExited else { return child.poll() }
        child.signalGroup(SIGTERM)
        if let status = await child.wait(timeout: timeout) { return status }
        _ = await child.killAndReap()
        return nil
    }

    /// SIGKILL to the process group now, and reaped. Idempotent with `stop()`.
    func kill() async {
        stopped.withLock { $0 = true }
        _ = await child.killAndReap()
    }

    /// Last resort when `stop()` was never awaited (a failed setup, say): SIGTERM now, SIGKILL
    /// shortly after, reaped in the background (deinit cannot wait).
    deinit {
        let alreadyStopped = stopped.withLock { $0 }
        guard !alreadyStopped, !child.hasExited else { return }
        let child = self.child
        child.signalGroup(SIGTERM)
        DispatchQueue.global().asyncAfter(deadline: .now() + 3) {
            if !child.hasExited { child.signalGroup(SIGKILL) }
            DispatchQueue.global().asyncAfter(deadline: .now() + 2) { _ = child.poll() }
        }
    }
}
