/// What primary and backup say to each other over their one connection (DESIGN.md,
/// "Replication"). Checkpoints and log entries travel in the encodings the disk uses
/// (`CheckpointCodec`, `EventLogCodec` records): this layer frames them and never looks inside.
public enum WireMessage: Equatable, Sendable {
    /// Primary → backup, first: who is asking, for what.
    case hello(Hello)
    /// Backup → primary: the hello is accepted.
    case welcome
    /// Either side, last: why the connection is being closed.
    case refusal(String)
    /// Primary → backup: the guest as given, which the backup prepares and checks against the
    /// hello's hash, and how the machine is configured (arguments, environment, listeners: the
    /// recording manifest's JSON, opaque here).
    case module(bytes: [UInt8], configuration: [UInt8])
    /// Primary → backup: one encoded checkpoint, for `epoch`.
    case checkpoint(epoch: UInt64, bytes: [UInt8])
    /// Primary → backup: event-log records, the first being entry `first`.
    case logRecords(first: UInt64, bytes: [UInt8])
    /// Backup → primary: the checkpoint of `epoch` is applied.
    case checkpointApplied(epoch: UInt64)
    /// Backup → primary: every log entry before `position` is held.
    case logHeld(position: UInt64)
    /// Either side, when it has had nothing else to say for an interval.
    case heartbeat

    public struct Hello: Equatable, Sendable {
        public var protocolVersion: UInt16
        public var mode: ReplicationMode
        /// SHA-256 (hex) of the prepared module.
        public var moduleHash: String

        public init(protocolVersion: UInt16 = WireCodec.protocolVersion, mode: ReplicationMode, moduleHash: String) {
            self.protocolVersion = protocolVersion
            self.mode = mode
            self.moduleHash = moduleHash
        }
    }

    /// What a log line calls this kind of message.
    public var kind: String {
        switch self {
        case .hello: return "hello"
        case .welcome: return "welcome"
        case .refusal: return "refusal"
        case .module: return "module"
        case .checkpoint: return "checkpoint"
        case .logRecords: return "log records"
        case .checkpointApplied: return "checkpoint applied"
        case .logHeld: return "log held"
        case .heartbeat: return "heartbeat"
        }
    }
}
