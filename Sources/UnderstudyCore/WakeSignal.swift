import CUnderstudyHost
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Tells a thread that may be blocked in `poll` that something is waiting for it: a flag to
/// check cheaply on every pass, and a pipe whose read end can sit beside the sockets in a wait.
///
/// A waiter that says when it blocks (`willWait`, `doneWaiting`) is written to only then: a
/// raise while it runs costs an atomic exchange instead of a write here and a read there (the
/// machine thread is usually running when the backup's acknowledgement arrives).
public final class WakeSignal: Sendable {
    private let raised = Atomic<Bool>(false)
    /// True unless the waiter says it runs. The raiser's and the waiter's accesses to `raised`
    /// and `waiting` are sequentially consistent, so of a raise and a wait that race, one sees
    /// the other: the raiser writes the pipe, or the waiter does not block.
    private let waiting = Atomic<Bool>(true)
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
        guard !raised.exchange(true, ordering: .sequentiallyConsistent) else { return }
        guard waiting.load(ordering: .sequentiallyConsistent) else { return }
        var one: UInt8 = 1
        _ = write(writer, &one, 1)
    }

    /// The waiting thread, about to block on `descriptor`: false if the signal is raised already
    /// (it must not block). Every `willWait` is followed by `doneWaiting` once the wait ends.
    public func willWait() -> Bool {
        waiting.store(true, ordering: .sequentiallyConsistent)
        return !raised.load(ordering: .sequentiallyConsistent)
    }

    /// The waiting thread, running again: raises from now on only set the flag.
    public func doneWaiting() { waiting.store(false, ordering: .sequentiallyConsistent) }

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
