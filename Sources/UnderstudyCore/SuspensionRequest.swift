/// Asks a running machine, from any thread, to stop at its next host call (a checkpoint is due).
/// A wait in progress is woken through the signal's pipe, so a guest idle in `poll` stops at once
/// rather than at its next timeout.
public final class SuspensionRequest: Sendable {
    private let signal = WakeSignal()

    public init() {}

    /// Readable while a request is pending; the world polls it beside the guest's sockets.
    public var wakeDescriptor: Int32 { signal.descriptor }

    public var isPending: Bool { signal.isRaised }

    public func request() { signal.raise() }

    /// Called by the machine as it handles the suspension: a request made from here on is for
    /// the next one.
    public func clear() { _ = signal.consume() }

    /// Empties the wake pipe of a byte whose request was already handled, so a wait does not spin
    /// on it.
    public func drainStaleWakeups() { signal.drain() }
}
