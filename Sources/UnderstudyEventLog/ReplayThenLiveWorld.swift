import UnderstudyCore

/// What a promoted `llm` backup runs on: the log the primary streamed, replayed from the applied
/// checkpoint until it runs out, then the live world. During replay nothing is sent (the clients
/// got whatever the primary released, and the rest they will never get: their connections died
/// with it); every output is still checked against its recorded digest, so a promotion that
/// would diverge halts instead of serving a different machine.
///
/// The live world must number its connections above every identity in the checkpoint and the
/// log (`LiveWorld.reserveConnections`): those connections are gone, and the guest sees them
/// fail.
///
/// An `active` backup follows a log that is still arriving, with no live world yet: it gets one
/// at its promotion, before its log is ended. A log that ends with no live world (the primary
/// said goodbye) halts the machine.
public final class ReplayThenLiveWorld: MachineWorld {
    private let replay: ReplayWorld
    /// Set before the replayed log ends, or the machine halts there.
    public var live: MachineWorld?
    /// The latest monotonic reading the guest got: a live clock behind it (another host) must not
    /// make the guest's time go backwards.
    private var lastMonotonic: UInt64 = 0
    /// Called once, at the first call the log cannot answer.
    public var onWentLive: (() -> Void)?
    public private(set) var isLive = false

    public init(replaying replay: ReplayWorld, then live: MachineWorld?) {
        self.replay = replay
        self.live = live
    }

    public var divergence: String? { replay.divergence }
    /// The log position the replay has reached.
    public var replayPosition: Int { replay.position }
    public var haltReason: String? {
        if let divergence = replay.divergence { return divergence }
        return isLive ? live?.haltReason : replay.haltReason
    }

    /// The world that answers the next call.
    private var current: MachineWorld {
        if isLive, let live { return live }
        if replay.hasNext || replay.divergence != nil { return replay }
        guard let live else { return replay }  // halts: the log is over and nothing is live
        isLive = true
        onWentLive?()
        return live
    }

    public func clockNow(_ clock: WorldClock) -> UInt64 {
        let value = current.clockNow(clock)
        guard clock == .monotonic else { return value }
        lastMonotonic = max(lastMonotonic, value)
        return lastMonotonic
    }

    public func randomBytes(into buffer: UnsafeMutableRawBufferPointer) { current.randomBytes(into: buffer) }
    public func accept(listener: ListenerID) -> WorldResult<ConnectionID> { current.accept(listener: listener) }

    public func receive(connection: ConnectionID, into buffer: UnsafeMutableRawBufferPointer) -> WorldResult<Int> {
        current.receive(connection: connection, into: buffer)
    }

    public func send(connection: ConnectionID, bytes: UnsafeRawBufferPointer) -> WorldResult<Int> {
        current.send(connection: connection, bytes: bytes)
    }

    public func shutdown(connection: ConnectionID, reading: Bool, writing: Bool) {
        current.shutdown(connection: connection, reading: reading, writing: writing)
    }

    public func close(connection: ConnectionID) { current.close(connection: connection) }
    public func close(listener: ListenerID) { current.close(listener: listener) }

    public func poll(_ interests: [PollInterest], timeoutNanos: UInt64?) -> PollOutcome {
        current.poll(interests, timeoutNanos: timeoutNanos)
    }

    public func console(_ stream: ConsoleStream, bytes: UnsafeRawBufferPointer) { current.console(stream, bytes: bytes) }

    public func hostCallEntered() -> Bool { current.hostCallEntered() }
    public func guestWillSuspend() { current.guestWillSuspend() }
}

extension EventLogEntry {
    /// The connection this entry accepted, if it is a successful accept.
    public var acceptedConnection: ConnectionID? {
        if case .accept(_, .done(let id)) = self { return id }
        return nil
    }
}
