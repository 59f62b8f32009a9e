import CUnderstudyHost
import Foundation
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A child program started with `posix_spawn`, its standard streams on files the caller names.
///
/// Foundation's `Process.run()` on this toolchain (swift-corelibs-foundation in Swift 6.3.1)
/// reads past a `dirent` while it counts the parent's open descriptors, and crashes the parent
/// now and then (one run in five to twenty of a test suite that starts a few hundred children).
/// This starts the child without that scan: every descriptor above stderr is closed in the child
/// by `posix_spawn_file_actions_addclosefrom_np`, and every signal starts at its default.
public final class SpawnedProcess: Sendable {
    /// Where one of the child's standard streams goes.
    public enum Stream: Sendable, Equatable {
        case null
        /// A file opened for the child: read for stdin, appended to for stdout and stderr.
        case file(String)
        /// stderr only: wherever stdout goes.
        case standardOutput
    }

    public let pid: pid_t
    /// The wait status once reaped; reaping happens once, under the lock.
    private let reaped = Mutex<Int32?>(nil)

    /// `program` is a path, or a name looked up on PATH. `environment` replaces the child's whole
    /// environment.
    public init(
        _ program: String, _ arguments: [String], environment: [String: String],
        stdin: Stream = .null, stdout: Stream = .null, stderr: Stream = .null
    ) throws(SpawnError) {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        for (descriptor, stream) in [(Int32(0), stdin), (1, stdout), (2, stderr)] {
            switch stream {
            case .null:
                posix_spawn_file_actions_addopen(&actions, descriptor, "/dev/null", descriptor == 0 ? O_RDONLY : O_WRONLY, 0)
            case .file(let path):
                let flags = descriptor == 0 ? O_RDONLY : O_WRONLY | O_CREAT | O_APPEND
                posix_spawn_file_actions_addopen(&actions, descriptor, path, flags, 0o644)
            case .standardOutput:
                precondition(descriptor == 2, "only stderr can follow stdout")
                posix_spawn_file_actions_adddup2(&actions, 1, 2)
            }
        }
        understudy_spawn_close_from(&actions, 3)

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // Ignored signals survive exec (NIO and the runtime ignore SIGPIPE); the child must not
        // inherit that, nor the spawning thread's mask.
        var everySignal = sigset_t()
        sigfillset(&everySignal)
        var noSignal = sigset_t()
        sigemptyset(&noSignal)
        posix_spawnattr_setsigdefault(&attributes, &everySignal)
        posix_spawnattr_setsigmask(&attributes, &noSignal)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))

        let argv = ([program] + arguments).map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { for pointer in argv + envp { free(pointer) } }
        var child: pid_t = 0
        let result = program.contains("/")
            ? posix_spawn(&child, program, &actions, &attributes, argv, envp)
            : posix_spawnp(&child, program, &actions, &attributes, argv, envp)
        guard result == 0 else { throw SpawnError(program: program, reason: String(cString: strerror(result))) }
        pid = child
    }

    /// Started with the caller's environment, `additions` laid over it.
    public convenience init(
        _ program: String, _ arguments: [String], adding additions: [String: String] = [:],
        stdin: Stream = .null, stdout: Stream = .null, stderr: Stream = .null
    ) throws(SpawnError) {
        try self.init(
            program, arguments, environment: ProcessInfo.processInfo.environment.merging(additions) { $1 },
            stdin: stdin, stdout: stdout, stderr: stderr)
    }

    public var isRunning: Bool { reap(blocking: false) == nil }

    /// Its exit code, or the number of the signal that ended it (as Foundation's
    /// `terminationStatus`); nil while it runs.
    public var terminationStatus: Int32? { reap(blocking: false).map(Self.status) }

    /// Blocks until it exits; see `terminationStatus`.
    @discardableResult
    public func waitUntilExit() -> Int32 {
        while true {
            if let status = reap(blocking: true) { return Self.status(status) }
        }
    }

    public func signal(_ number: Int32) {
        guard isRunning else { return }
        _ = kill(pid, number)
    }

    /// A blocking reap holds the lock for its wait: no other caller could reap it anyway.
    private func reap(blocking: Bool) -> Int32? {
        reaped.withLock { status in
            if let status { return status }
            var raw: Int32 = 0
            let found = waitpid(pid, &raw, blocking ? 0 : WNOHANG)
            if found == pid {
                status = raw
            } else if found < 0, errno != EINTR {
                // ECHILD: someone else reaped it. Nothing more will be known; call it ended.
                status = 0
            }
            return status
        }
    }

    private static func status(_ raw: Int32) -> Int32 {
        let signal = raw & 0x7f
        return signal == 0 ? (raw >> 8) & 0xff : signal
    }
}

public struct SpawnError: Error, CustomStringConvertible {
    public let program: String
    public let reason: String
    public var description: String { "cannot start \(program): \(reason)" }
}
