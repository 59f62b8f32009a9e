import CUnderstudyHost
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Tells a thread that may be blocked in `poll` that something is waiting for it: a flag to
/// check cheaply on every pass, and a pipe whose read end can sit beside the sockets in a wait.
public final class WakeSignal: Sendable {
    private let raised = Atomic<Bool>(false)
    /// Readable while the signal is raised.
    public let descriptor: Int32
    private let writer: Int32

    public init() {
        var ends: [Int32] = [-1, -1]
        let made = understudy_pipe(&ends)
        precondition(made == 0, "pipe failed: errno \(errno)")
        descriptor = ends[0]
        writer = ends[1]
    }

    deinit {
        close(descriptor)
        close(writer)
    }

    /// Any thread.
    public func raise() {
        guard !raised.exchange(true, ordering: .acquiringAndReleasing) else { return }
        var one: UInt8 = 1
        _ = write(writer, &one, 1)
    }

    public var isRaised: Bool { raised.load(ordering: .acquiring) }

    /// The waiting thread: true (and the signal lowered) if it was raised. Whatever the raiser
    /// published before raising is visible once this returns true; a raise racing with it either
    /// counts as this one or raises the signal again. A byte written by a raise that lost such a
    /// race may stay in the pipe: `drain()` removes it.
    public func consume() -> Bool {
        guard raised.load(ordering: .acquiring) else { return false }
        drain()
        raised.store(false, ordering: .releasing)
        return true
    }

    public func drain() {
        var drained = [UInt8](repeating: 0, count: 16)
        while read(descriptor, &drained, drained.count) > 0 {}
    }
}
