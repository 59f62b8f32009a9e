import CUnderstudyHost
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Asks a running machine, from any thread, to stop at its next host call (a checkpoint is due).
/// A wait in progress is woken through a pipe, so a guest idle in `poll` stops at once
/// rather than at its next timeout.
public final class SuspensionRequest: Sendable {
    private let pending = Atomic<Bool>(false)
    /// Readable while a request is pending; the world polls it beside the guest's sockets.
    public let wakeDescriptor: Int32
    private let wakeWriter: Int32

    public init() {
        var ends: [Int32] = [-1, -1]
        let made = understudy_pipe(&ends)
        precondition(made == 0, "pipe failed: errno \(errno)")
        wakeDescriptor = ends[0]
        wakeWriter = ends[1]
    }

    deinit {
        close(wakeDescriptor)
        close(wakeWriter)
    }

    public var isPending: Bool { pending.load(ordering: .acquiring) }

    public func request() {
        pending.store(true, ordering: .releasing)
        var one: UInt8 = 1
        _ = write(wakeWriter, &one, 1)
    }

    /// Called by the machine once the suspension has been handled.
    public func clear() {
        pending.store(false, ordering: .releasing)
        drainStaleWakeups()
    }

    /// Empties the wake pipe. A request made concurrently sets `pending` again after its byte,
    /// so a reader that finds `pending` false after draining has lost nothing.
    public func drainStaleWakeups() {
        var drained = [UInt8](repeating: 0, count: 64)
        while read(wakeDescriptor, &drained, drained.count) > 0 {}
    }
}
