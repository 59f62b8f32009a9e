import UnderstudyCore

/// Where a recording's encoded entries go: a file (`EventLogFile`), memory (tests), or the
/// replication stream to an `llm` backup.
public protocol EventLogSink: AnyObject {
    /// `bytes` holds whole records, the first of them entry `first`.
    func write(_ bytes: [UInt8], first: UInt64) throws
}

/// Wraps the live world: every answer it gives the guest, and every output the guest makes, is
/// appended to the event log before the guest sees it. The log is handed to the sink in batches:
/// at each `flush()` (the recorder flushes before every checkpoint) and whenever a batch grows
/// past `batchBytes`.
public final class RecordingWorld: MachineWorld {
    private let inner: MachineWorld
    private let sink: EventLogSink
    private let batchBytes: Int
    private var pending = ByteWriter()
    /// The log position the next entry gets; a checkpoint taken now corresponds to it.
    public private(set) var position: UInt64
    /// The position of the first entry in the batch not yet handed to the sink.
    private var batchStart: UInt64
    public private(set) var haltReason: String?
    /// Suspendable host calls entered since the last entry (see `EventLogEntry.suspended`).
    private var hostCallsSinceEntry: UInt32 = 0

    public init(recording inner: MachineWorld, to sink: EventLogSink, startingAt position: UInt64 = 0, batchBytes: Int = 1 << 20) {
        self.inner = inner
        self.sink = sink
        self.position = position
        batchStart = position
        self.batchBytes = batchBytes
    }

    /// Hands every entry logged so far to the sink.
    public func flush() throws {
        guard !pending.bytes.isEmpty else { return }
        let first = batchStart
        batchStart = position
        try sink.write(pending.take(), first: first)
    }

    private func log(_ entry: EventLogEntry) {
        EventLogCodec.append(entry, sequence: position, to: &pending)
        position += 1
        hostCallsSinceEntry = 0
        guard pending.bytes.count >= batchBytes, haltReason == nil else { return }
        do {
            try flush()
        } catch {
            // The guest must not run on unrecorded: stop it at the end of this host call.
            haltReason = "cannot write the event log: \(error)"
        }
    }

    public func clockNow(_ clock: WorldClock) -> UInt64 {
        let value = inner.clockNow(clock)
        log(.clock(clock, value))
        return value
    }

    public func randomBytes(into buffer: UnsafeMutableRawBufferPointer) {
        inner.randomBytes(into: buffer)
        log(.random(Array(buffer)))
    }

    public func accept(listener: ListenerID) -> WorldResult<ConnectionID> {
        let result = inner.accept(listener: listener)
        log(.accept(listener, result))
        return result
    }

    public func receive(connection: ConnectionID, into buffer: UnsafeMutableRawBufferPointer) -> WorldResult<Int> {
        let result = inner.receive(connection: connection, into: buffer)
        switch result {
        case .done(let count): log(.receive(connection, .done(Array(buffer[..<count]))))
        case .wouldBlock: log(.receive(connection, .wouldBlock))
        case .failed(let errno): log(.receive(connection, .failed(errno: errno)))
        }
        return result
    }

    public func send(connection: ConnectionID, bytes: UnsafeRawBufferPointer) -> WorldResult<Int> {
        let result = inner.send(connection: connection, bytes: bytes)
        log(.send(connection, offered: UInt32(bytes.count), digest: OutputDigest.of(bytes), result: result))
        return result
    }

    public func shutdown(connection: ConnectionID, reading: Bool, writing: Bool) {
        inner.shutdown(connection: connection, reading: reading, writing: writing)
        log(.shutdown(connection, reading: reading, writing: writing))
    }

    public func close(connection: ConnectionID) {
        inner.close(connection: connection)
        log(.closeConnection(connection))
    }

    public func close(listener: ListenerID) {
        inner.close(listener: listener)
        log(.closeListener(listener))
    }

    public func poll(_ interests: [PollInterest], timeoutNanos: UInt64?) -> PollOutcome {
        let outcome = inner.poll(interests, timeoutNanos: timeoutNanos)
        if outcome != .interrupted { log(.poll(interests: UInt32(interests.count), outcome)) }
        return outcome
    }

    public func console(_ stream: ConsoleStream, bytes: UnsafeRawBufferPointer) {
        inner.console(stream, bytes: bytes)
        log(.console(stream, length: UInt32(bytes.count), digest: OutputDigest.of(bytes)))
    }

    public func hostCallEntered() -> Bool {
        hostCallsSinceEntry += 1
        return inner.hostCallEntered()
    }

    public func guestWillSuspend() {
        log(.suspended(hostCalls: hostCallsSinceEntry))
    }
}

/// Collects a recording in memory (tests, and the replication layer's staging).
public final class EventLogBuffer: EventLogSink {
    public private(set) var bytes: [UInt8]

    public init(moduleHash: String) { bytes = EventLogCodec.header(moduleHash: moduleHash) }

    public func write(_ bytes: [UInt8], first: UInt64) throws { self.bytes += bytes }
}
