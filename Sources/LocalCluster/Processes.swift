#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation

/// Starting and signalling the cluster's child processes.
public enum Processes {
    /// Spawns `executable` in a new session (so it outlives the caller and ignores the caller's
    /// terminal signals), with stdin from /dev/null and stdout+stderr appended to `logFile`.
    public static func spawn(_ executable: String, _ arguments: [String], logFile: String, environment: [String: String]? = nil) throws -> Int32 {
        var fileActions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&fileActions)
        defer { posix_spawn_file_actions_destroy(&fileActions) }
        posix_spawn_file_actions_addopen(&fileActions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&fileActions, 1, logFile, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_adddup2(&fileActions, 1, 2)

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // POSIX_SPAWN_SETSID (glibc ≥ 2.26) and a default signal mask/dispositions for the child.
        var defaults = sigset_t()
        sigfillset(&defaults)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attributes, &empty)
        posix_spawnattr_setflags(&attributes, Int16(0x80 | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))

        let env = (environment ?? ProcessInfo.processInfo.environment).map { "\($0.key)=\($0.value)" }
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp = env.map { strdup($0) } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, executable, &fileActions, &attributes, argv, envp)
        guard rc == 0 else {
            throw LocalClusterError("cannot start \(executable): \(String(cString: strerror(rc)))")
        }
        return pid
    }

    /// Whether `pid` is running (a zombie counts as gone; our own zombie children are reaped here).
    public static func isAlive(_ pid: Int32) -> Bool {
        var status: Int32 = 0
        if waitpid(pid, &status, WNOHANG) == pid { return false }
        guard kill(pid, 0) == 0 else { return false }
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return true }
        let state = stat[stat.index(after: close)...].trimmingCharacters(in: .whitespaces).first
        return state != "Z" && state != "X"
    }

    /// The command line of `pid`, or nil.
    public static func commandLine(_ pid: Int32) -> String? {
        guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return nil }
        return String(decoding: data.map { $0 == 0 ? 32 : $0 }, as: UTF8.self)
    }

    public static func signal(_ pid: Int32, _ signal: Int32) {
        _ = kill(pid, signal)
    }

    /// Sends `signal`, then waits up to `timeout` for the process to exit; SIGKILL after that.
    public static func terminate(_ pid: Int32, signal: Int32 = SIGTERM, timeout: Duration = .seconds(10)) {
        guard isAlive(pid) else { return }
        _ = kill(pid, SIGCONT) // a stopped process cannot act on SIGTERM
        _ = kill(pid, signal)
        let deadline = ContinuousClock.now + timeout
        while isAlive(pid) && ContinuousClock.now < deadline { usleep(20_000) }
        if isAlive(pid) {
            _ = kill(pid, SIGKILL)
            waitGone(pid, timeout: .seconds(5))
        }
    }

    /// Waits until `pid` is gone (reaping it if it is our child).
    public static func waitGone(_ pid: Int32, timeout: Duration) {
        let deadline = ContinuousClock.now + timeout
        while isAlive(pid) && ContinuousClock.now < deadline { usleep(10_000) }
    }

    /// A TCP port on 127.0.0.1 that was free a moment ago.
    public static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw LocalClusterError("cannot open a socket to find a free port") }
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = 0
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) == 0 && getsockname(fd, $0, &len) == 0 }
        }
        guard bound else { throw LocalClusterError("cannot bind a socket to find a free port") }
        return Int(UInt16(bigEndian: addr.sin_port))
    }

    /// The absolute path of a program on PATH or in the usual system directories, or nil.
    public static func which(_ name: String) -> String? {
        let path = (ProcessInfo.processInfo.environment["PATH"] ?? "") + ":/usr/sbin:/usr/bin:/sbin:/bin"
        for dir in path.split(separator: ":") {
            let candidate = "\(dir)/\(name)"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return nil
    }

    /// Runs a program to completion; returns its exit status.
    public static func run(_ executable: String, _ arguments: [String], logFile: String) throws -> Int32 {
        let pid = try spawn(executable, arguments, logFile: logFile)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) == -1 && errno == EINTR {}
        // WIFEXITED/WEXITSTATUS are macros: decode by hand.
        return (status & 0x7F) == 0 ? (status >> 8) & 0xFF : 128 + (status & 0x7F)
    }
}

/// A launcher failure, with what to do about it.
public struct LocalClusterError: Error, CustomStringConvertible, Sendable {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
