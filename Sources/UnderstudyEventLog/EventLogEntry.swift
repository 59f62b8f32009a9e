import UnderstudyCore

/// One nondeterministic result the guest consumed, or one output it produced, in the order the
/// machine met them. The log position of an entry is its sequence number. Outputs are kept as
/// (connection, length, digest): enough for replay to check every byte, without the bytes.
public enum EventLogEntry: Equatable, Sendable {
    case clock(WorldClock, UInt64)
    case random([UInt8])
    case accept(ListenerID, WorldResult<ConnectionID>)
    case receive(ConnectionID, WorldResult<[UInt8]>)
    /// `offered` bytes with `digest` were handed to the world, which took `result` of them.
    case send(ConnectionID, offered: UInt32, digest: UInt32, result: WorldResult<Int>)
    case shutdown(ConnectionID, reading: Bool, writing: Bool)
    case closeConnection(ConnectionID)
    case closeListener(ListenerID)
    /// An interrupted poll is never logged: the guest unwinds instead (`suspended`).
    case poll(interests: UInt32, PollOutcome)
    case console(ConsoleStream, length: UInt32, digest: UInt32)
    /// The guest unwound here; replay unwinds at the same point. `hostCalls` counts the
    /// suspendable host calls entered since the previous entry, this one included (0: the
    /// call that logged the previous entry, inside its wait), because calls like `sched_yield`
    /// ask the world nothing and so leave no entry of their own. Checkpoints follow one.
    case suspended(hostCalls: UInt32)

    /// What a divergence message calls this kind of entry.
    public var kind: String {
        switch self {
        case .clock: return "clock reading"
        case .random: return "random bytes"
        case .accept: return "accept"
        case .receive: return "receive"
        case .send: return "send"
        case .shutdown: return "shutdown"
        case .closeConnection: return "connection close"
        case .closeListener: return "listener close"
        case .poll: return "poll"
        case .console: return "console output"
        case .suspended: return "suspension"
        }
    }
}

/// The digest an output is logged with: CRC-32C of its bytes. Replay compares it with what the
/// replayed guest produced, together with the length, so it detects divergence; it is not a
/// defence against someone forging a log.
public enum OutputDigest {
    public static func of(_ bytes: UnsafeRawBufferPointer) -> UInt32 { CRC32C.checksum(bytes) }
}
