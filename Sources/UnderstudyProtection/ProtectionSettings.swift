import UnderstudyCheckpoint
import UnderstudyCore
import UnderstudyReplication

/// How a primary protects its machine: its flags. They travel to the backup with the module
/// (`ReplicatedMachine`), so that a backup promoted to primary protects the machine exactly as
/// the primary it replaces did, in what it checkpoints, how long it waits for its own backup, and
/// how long it tries to reach etcd.
public struct ProtectionSettings: Codable, Equatable, Sendable {
    /// `remus`: how often a checkpoint is taken (and output released).
    public var epoch: Duration = .milliseconds(25)
    /// `llm`: how often a checkpoint is taken, bounding what a promotion replays. LLM's paper
    /// checkpoints rarely; replaying runs the guest about as fast as it ran, so this is roughly
    /// the worst-case replay time of a takeover (goal: ≤ 100 ms failover), and a delta checkpoint
    /// costs a fraction of a millisecond of pause.
    public var checkpointInterval: Duration = .milliseconds(50)
    /// `llm`: a checkpoint is also taken once this much log has been sent since the last.
    public var logBytesPerCheckpoint = 8 << 20
    /// `active`: how often both machines stop at one log position and compare.
    public var syncInterval: Duration = .milliseconds(100)
    /// What memory travels in: remus and llm checkpoints as changed blocks, active repairs (FGBI).
    public var blockSize = SyncBlockSize.standard
    /// `active`: every sync also compares the whole state (tests, diagnosis).
    public var verifySyncs = false
    /// A seeded backup that has left an output or a checkpoint unacknowledged this long counts
    /// as lost, though it heartbeats (a stuck process, a full disk, a stopped child): otherwise
    /// every reply would wait for it forever.
    public var ackTimeout: Duration = .milliseconds(500)
    /// How long a primary that must win a generation keeps trying to reach etcd before it stands down.
    public var fenceTimeout: Duration = .seconds(5)

    public init() {}

    // Durations travel as whole nanoseconds: readable, and the same in any Swift's encoding.
    private enum CodingKeys: String, CodingKey {
        case epochNanos, checkpointIntervalNanos, logBytesPerCheckpoint, syncIntervalNanos, blockSize, verifySyncs, ackTimeoutNanos
        case fenceTimeoutNanos
    }

    public init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        func duration(_ key: CodingKeys) throws -> Duration { .nanoseconds(try container.decode(Int64.self, forKey: key)) }
        epoch = try duration(.epochNanos)
        checkpointInterval = try duration(.checkpointIntervalNanos)
        logBytesPerCheckpoint = try container.decode(Int.self, forKey: .logBytesPerCheckpoint)
        syncInterval = try duration(.syncIntervalNanos)
        blockSize = try container.decode(Int.self, forKey: .blockSize)
        verifySyncs = try container.decode(Bool.self, forKey: .verifySyncs)
        ackTimeout = try duration(.ackTimeoutNanos)
        fenceTimeout = try duration(.fenceTimeoutNanos)
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        func encode(_ duration: Duration, _ key: CodingKeys) throws { try container.encode(Int64(duration.nanoseconds), forKey: key) }
        try encode(epoch, .epochNanos)
        try encode(checkpointInterval, .checkpointIntervalNanos)
        try container.encode(logBytesPerCheckpoint, forKey: .logBytesPerCheckpoint)
        try encode(syncInterval, .syncIntervalNanos)
        try container.encode(blockSize, forKey: .blockSize)
        try container.encode(verifySyncs, forKey: .verifySyncs)
        try encode(ackTimeout, .ackTimeoutNanos)
        try encode(fenceTimeout, .fenceTimeoutNanos)
    }

    /// Why these settings cannot protect a machine, if they cannot: a backup refuses a primary
    /// that sends such (it would run them once promoted).
    public var refusal: String? {
        let durations = [
            ("epoch", epoch), ("checkpoint interval", checkpointInterval), ("sync interval", syncInterval), ("ack timeout", ackTimeout),
            ("fence timeout", fenceTimeout),
        ]
        if let (name, duration) = durations.first(where: { $0.1 <= .zero || $0.1 > .seconds(3600) }) {
            return "the \(name) of \(duration.milliseconds) ms is not between 0 and an hour"
        }
        guard logBytesPerCheckpoint > 0 else { return "a checkpoint every \(logBytesPerCheckpoint) bytes of log" }
        guard SyncBlockSize.allowed.contains(blockSize) else { return "block size \(blockSize)" }
        return nil
    }
}

/// What the module message carries beside the module: the machine's configuration, as a
/// recording keeps it, and how the primary protects it.
struct ReplicatedMachine: Codable {
    var manifest: RecordingManifest
    var protection: ProtectionSettings
}
