import UnderstudyCore

/// Where a replay reads its entries: a finished log (an array), or one still arriving (an
/// active-mode backup follows its primary's log, and waits at its end for more).
public protocol EventLogSource {
    /// The entry at `position`, waiting for it if the log may still grow; nil once the log ends
    /// before it.
    func entry(at position: Int) -> EventLogEntry?
}

extension Array: EventLogSource where Element == EventLogEntry {
    public func entry(at position: Int) -> EventLogEntry? { position < count ? self[position] : nil }
}

/// Answers the guest from a recorded event log instead of the outside world, and sends nothing
/// anywhere: every output the replayed guest makes is checked against the one the recording
/// logged at the same position. The first disagreement halts the machine with a reason naming
/// the log position; so does the end of the log (`reachedEnd`), which is how a replay of a
/// finished recording stops.
public final class ReplayWorld: MachineWorld {
    private let entries: any EventLogSource
    /// The log position of the next entry to consume.
    public private(set) var position: Int
    public private(set) var divergence: String?
    public private(set) var reachedEnd = false
    /// Suspendable host calls entered since the last entry consumed (see `EventLogEntry.suspended`).
    private var hostCallsSinceEntry: UInt32 = 0
    /// Output bytes checked against the recording.
    public private(set) var verifiedOutputBytes: UInt64 = 0

    public init(entries: [EventLogEntry], startingAt position: Int) {
        precondition(position >= 0 && position <= entries.count, "replay starts outside the log")
        self.entries = entries
        self.position = position
    }

    /// Replays `source` from `position`; a growing source makes the guest wait for its entries.
    public init(following source: any EventLogSource, startingAt position: Int) {
        entries = source
        self.position = position
    }

    /// True while entries remain and none has diverged: the next call is answered from the log.
    /// On a growing log, waits until the next entry arrives or the log ends.
    public var hasNext: Bool { divergence == nil && entries.entry(at: position) != nil }

    public var haltReason: String? {
        if let divergence { return divergence }
        return reachedEnd ? "the event log ends at position \(position)" : nil
    }

    /// The next entry, consumed; nil (and the machine halts) when the log is over or has
    /// already diverged.
    private func next(_ asked: String) -> EventLogEntry? {
        guard haltReason == nil else { return nil }
        guard let entry = entries.entry(at: position) else {
            reachedEnd = true
            return nil
        }
        position += 1
        hostCallsSinceEntry = 0
        return entry
    }

    private func diverged(_ asked: String, _ found: EventLogEntry?, detail: String? = nil) {
        guard divergence == nil, let found else { return }
        let at = position - 1
        divergence = detail.map { "divergence at log position \(at): \($0)" }
            ?? "divergence at log position \(at): the guest asked for \(asked), the recording has \(found.kind)"
    }

    private static let failure = Int32(5)  // EIO: what the guest sees while the machine halts

    public func clockNow(_ clock: WorldClock) -> UInt64 {
        let entry = next("a \(clock) clock reading")
        guard case .clock(clock, let value) = entry else {
            diverged("a clock reading", entry)
            return 0
        }
        return value
    }

    public func randomBytes(into buffer: UnsafeMutableRawBufferPointer) {
        let entry = next("random bytes")
        guard case .random(let bytes) = entry, bytes.count == buffer.count else {
            diverged("\(buffer.count) random bytes", entry)
            buffer.initializeMemory(as: UInt8.self, repeating: 0)
            return
        }
        buffer.copyBytes(from: bytes)
    }

    public func accept(listener: ListenerID) -> WorldResult<ConnectionID> {
        let entry = next("accept")
        guard case .accept(listener, let result) = entry else {
            diverged("an accept on \(listener)", entry)
            return .failed(errno: Self.failure)
        }
        return result
    }

    public func receive(connection: ConnectionID, into buffer: UnsafeMutableRawBufferPointer) -> WorldResult<Int> {
        let entry = next("receive")
        guard case .receive(connection, let result) = entry else {
            diverged("a receive on \(connection)", entry)
            return .failed(errno: Self.failure)
        }
        switch result {
        case .done(let bytes):
            guard bytes.count <= buffer.count else {
                diverged("receive", entry, detail: "the guest offered \(buffer.count) bytes for \(bytes.count) recorded ones")
                return .failed(errno: Self.failure)
            }
            buffer.copyBytes(from: bytes)
            return .done(bytes.count)
        case .wouldBlock: return .wouldBlock
        case .failed(let errno): return .failed(errno: errno)
        }
    }

    public func send(connection: ConnectionID, bytes: UnsafeRawBufferPointer) -> WorldResult<Int> {
        let entry = next("send")
        guard case .send(connection, let offered, let digest, let result) = entry else {
            diverged("a send on \(connection)", entry)
            return .failed(errno: Self.failure)
        }
        guard offered == bytes.count, digest == OutputDigest.of(bytes) else {
            diverged("send", entry, detail: "the guest sent \(bytes.count) bytes on \(connection) that differ from the \(offered) recorded")
            return .failed(errno: Self.failure)
        }
        if case .done(let count) = result { verifiedOutputBytes += UInt64(count) }
        return result
    }

    public func shutdown(connection: ConnectionID, reading: Bool, writing: Bool) {
        let entry = next("shutdown")
        guard case .shutdown(connection, reading, writing) = entry else { return diverged("a shutdown of \(connection)", entry) }
    }

    public func close(connection: ConnectionID) {
        let entry = next("close")
        guard case .closeConnection(connection) = entry else { return diverged("closing \(connection)", entry) }
    }

    public func close(listener: ListenerID) {
        let entry = next("close")
        guard case .closeListener(listener) = entry else { return diverged("closing \(listener)", entry) }
    }

    public func poll(_ interests: [PollInterest], timeoutNanos: UInt64?) -> PollOutcome {
        // A wait the recording interrupted for a suspension: unwind here too, without consuming.
        if suspensionIsNext { return .interrupted }
        let entry = next("poll")
        guard case .poll(let count, let outcome) = entry, count == interests.count else {
            diverged("a poll of \(interests.count) descriptors", entry)
            return .failed(errno: Self.failure)
        }
        return outcome
    }

    public func console(_ stream: ConsoleStream, bytes: UnsafeRawBufferPointer) {
        let entry = next("console output")
        guard case .console(stream, let length, let digest) = entry, length == bytes.count, digest == OutputDigest.of(bytes)
        else { return diverged("console output of \(bytes.count) bytes", entry) }
        verifiedOutputBytes += UInt64(length)
    }

    /// The recording suspended at this point: the next entry is a suspension, and as many
    /// host calls have been entered since the last entry as when it was recorded.
    private var suspensionIsNext: Bool {
        guard haltReason == nil, case .suspended(let calls) = entries.entry(at: position) else { return false }
        return calls == hostCallsSinceEntry
    }

    public func hostCallEntered() -> Bool {
        hostCallsSinceEntry += 1
        return suspensionIsNext
    }

    public func guestWillSuspend() {
        let calls = hostCallsSinceEntry
        let entry = next("a suspension")
        guard entry == .suspended(hostCalls: calls) else {
            return diverged("a suspension after \(calls) host calls", entry)
        }
    }
}
