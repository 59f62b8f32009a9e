/// The one seam between a machine and everything outside it.
///
/// Every value a guest receives that the guest's own code did not compute — a clock reading,
/// random bytes, an accepted connection, received bytes, a readiness set, how many bytes a send
/// took — is the result of one call on this protocol, and every byte that leaves the machine
/// passes through it too. `RecordingWorld` wraps a live world and logs each result;
/// `ReplayWorld` answers from the log and sends nothing. Nothing else may reach the guest (DESIGN.md,
/// invariant 1).
///
/// Connection and listener identities are the world's, not host file descriptors: a restored or
/// replayed machine keeps its identities while the host sockets behind them change.
public protocol MachineWorld: AnyObject {
    func clockNow(_ clock: WorldClock) -> UInt64
    func randomBytes(into buffer: UnsafeMutableRawBufferPointer)

    func accept(listener: ListenerID) -> WorldResult<ConnectionID>
    func receive(connection: ConnectionID, into buffer: UnsafeMutableRawBufferPointer) -> WorldResult<Int>
    func send(connection: ConnectionID, bytes: UnsafeRawBufferPointer) -> WorldResult<Int>
    func shutdown(connection: ConnectionID, reading: Bool, writing: Bool)
    func close(connection: ConnectionID)
    func close(listener: ListenerID)

    /// Waits until one of `interests` is ready, `timeoutNanos` passes (nil: no limit), or the
    /// host interrupts the wait (a checkpoint is due). Never busy-waits.
    func poll(_ interests: [PollInterest], timeoutNanos: UInt64?) -> PollOutcome

    /// Console output (the guest's stdout and stderr): output, never input.
    func console(_ stream: ConsoleStream, bytes: UnsafeRawBufferPointer)

    /// Told at the start of every host call that can suspend (not when one resumes after a
    /// rewind), before the machine decides whether to suspend there. Replay answers true where
    /// the recorded run suspended, so the replayed guest unwinds at the same call and its memory
    /// (the unwind buffer included) stays identical; a recording counts these calls to say
    /// where that was, since some of them ask the world nothing. A live world answers false:
    /// its suspensions come from the `SuspensionRequest`.
    func hostCallEntered() -> Bool

    /// The guest is about to unwind at this host call. A recording logs it (see above).
    func guestWillSuspend()

    /// Set once the world cannot answer any more (replay diverged or ran out of log, a
    /// recording could not be written): the machine stops at the end of the current host call
    /// with this reason.
    var haltReason: String? { get }
}

extension MachineWorld {
    public func hostCallEntered() -> Bool { false }
    public func guestWillSuspend() {}
    public var haltReason: String? { nil }
}

public enum WorldClock: UInt8, Sendable {
    case realtime = 0
    case monotonic = 1
    case processCPU = 2
    case threadCPU = 3
}

public enum ConsoleStream: UInt8, Sendable {
    case stdout = 1
    case stderr = 2
}

public struct ListenerID: Hashable, Sendable, CustomStringConvertible {
    public let index: Int
    public init(_ index: Int) { self.index = index }
    public var description: String { "listener \(index)" }
}

public struct ConnectionID: Hashable, Sendable, CustomStringConvertible {
    public let value: UInt64
    public init(_ value: UInt64) { self.value = value }
    public var description: String { "connection \(value)" }
}

/// The outcome of a world operation that may not be able to proceed now.
public enum WorldResult<Value: Equatable & Sendable>: Equatable, Sendable {
    case done(Value)
    /// Nothing available yet; the caller decides whether to wait (blocking fd) or say EAGAIN.
    case wouldBlock
    /// The peer reset or the socket failed; `errno` is the host's, the device maps it.
    case failed(errno: Int32)
}

public enum PollTarget: Hashable, Sendable {
    case listener(ListenerID)
    case connection(ConnectionID)
}

public struct PollInterest: Hashable, Sendable {
    public var target: PollTarget
    public var readable: Bool
    public var writable: Bool
    public init(target: PollTarget, readable: Bool, writable: Bool) {
        self.target = target
        self.readable = readable
        self.writable = writable
    }
}

public struct PollReadiness: Equatable, Sendable {
    /// Index into the interests passed to `poll`.
    public var interest: Int
    public var readable: Bool
    public var writable: Bool
    public var hangup: Bool
    public init(interest: Int, readable: Bool, writable: Bool, hangup: Bool) {
        self.interest = interest
        self.readable = readable
        self.writable = writable
        self.hangup = hangup
    }
}

public enum PollOutcome: Equatable, Sendable {
    case ready([PollReadiness])
    case timedOut
    /// The host asked the machine to stop at this host call (a checkpoint is due).
    case interrupted
    /// The wait itself failed (too many descriptors, no memory): the guest's call fails too.
    case failed(errno: Int32)
}
