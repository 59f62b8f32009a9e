import NIOCore

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
    /// Primary → backup: the guest as the primary prepared it, whose SHA-256 the backup checks
    /// against the hello's before using it, and how the machine is configured (arguments, environment, listeners: the
    /// recording manifest's JSON, opaque here).
    case module(bytes: [UInt8], configuration: [UInt8])
    /// Primary → backup: one encoded checkpoint, for `epoch`.
    case checkpoint(epoch: UInt64, bytes: [UInt8])
    /// Primary → backup: event-log records, the first being entry `first`.
    case logRecords(first: UInt64, bytes: [UInt8])
    /// Primary → backup: a checkpoint compressed as a whole (lz4 or zstd, whichever was smaller),
    /// `size` bytes once expanded. `packing(epoch:checkpoint:)` chooses between the two forms.
    case compressedCheckpoint(epoch: UInt64, encoding: BlockEncoding, size: UInt32, bytes: [UInt8])
    /// Backup → primary: the checkpoint of `epoch` is applied.
    case checkpointApplied(epoch: UInt64)
    /// Backup → primary: every log entry before `position` is held.
    case logHeld(position: UInt64)
    /// Either side, when it has had nothing else to say for an interval.
    case heartbeat
    /// Primary → backup (`remus`, `llm`): checkpoint `epoch` as a `BlockPatch` of XORed blocks,
    /// packed as `PackedBytes`.
    case blockCheckpoint(epoch: UInt64, patch: PackedBytes)
    /// Primary → backup (`active`): both machines stop here and compare.
    case syncPoint(SyncPoint)
    /// Backup → primary: its digest equals the sync's; nothing to repair.
    case syncMatched(sync: UInt64)
    /// Backup → primary: its digest differs. `hashes` are `PageBlockHashes` of every page it
    /// wrote since the previous sync; `stateDigest` hashes its globals and devices.
    case syncDiffers(sync: UInt64, blockSize: UInt16, stateDigest: UInt64, hashes: [UInt8])
    /// Primary → backup: a `BlockPatch`, packed as `PackedBytes`.
    case syncRepair(sync: UInt64, repair: PackedBytes)
    /// Primary → backup: the store records this backup as protecting the machine in
    /// `generation`, and from `position` on (a log position in `llm` and `active`, a checkpoint
    /// in `remus`) output waits for it. The primary released what came before alone: the backup
    /// may take over only once it holds everything up to `position`.
    case protecting(generation: UInt64, position: UInt64)
    /// Primary → backup, a planned migration: the primary of `generation` has stopped its guest
    /// where the backup holds everything once it has `position` (as in `protecting`); the backup
    /// is to win the next generation and serve.
    case handover(generation: UInt64, position: UInt64)
    /// Backup → primary: it has won `generation` for the handover and serves from now on.
    case takingOver(generation: UInt64)
    /// Any of the above with its payload already encoded and checksummed (`WireCodec.encoded`),
    /// off the event loop: a checkpoint of hundreds of MiB would otherwise hold the loop (and
    /// the heartbeats behind it) for as long as copying and checksumming it takes. Goes out as
    /// the frame of the message it was made from; never decoded as such.
    case encoded(EncodedPayload)

    public struct EncodedPayload: Equatable, Sendable {
        /// The message it was made from (`WireMessage.kind`).
        public let kind: String
        let type: UInt8
        let payload: ByteBuffer
        let crc: UInt32
    }

    public struct Hello: Equatable, Sendable {
        public var protocolVersion: UInt16
        public var mode: ReplicationMode
        /// SHA-256 (hex) of the prepared module.
        public var moduleHash: String
        /// The generation the primary holds: a backup that knows a newer one refuses it.
        public var generation: UInt64
        /// The machine's name (`--name`): a backup for another machine refuses it.
        public var machine: String
        /// The prepared module's size: the module frame must be this size.
        public var moduleBytes: UInt64
        /// The machine's memory limit: no checkpoint may hold more. With `moduleBytes` it bounds
        /// every frame after the handshake (`WireLimits.streamPayloadMax(for:)`).
        public var memoryLimitBytes: UInt64

        public init(
            protocolVersion: UInt16 = WireCodec.protocolVersion, mode: ReplicationMode, moduleHash: String, generation: UInt64 = 0,
            machine: String = "", moduleBytes: UInt64, memoryLimitBytes: UInt64
        ) {
            self.protocolVersion = protocolVersion
            self.mode = mode
            self.moduleHash = moduleHash
            self.generation = generation
            self.machine = machine
            self.moduleBytes = moduleBytes
            self.memoryLimitBytes = memoryLimitBytes
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
        case .compressedCheckpoint: return "compressed checkpoint"
        case .logRecords: return "log records"
        case .checkpointApplied: return "checkpoint applied"
        case .logHeld: return "log held"
        case .heartbeat: return "heartbeat"
        case .blockCheckpoint: return "block checkpoint"
        case .syncPoint: return "sync point"
        case .syncMatched: return "sync matched"
        case .syncDiffers: return "sync differs"
        case .syncRepair: return "sync repair"
        case .protecting: return "protecting"
        case .handover: return "handover"
        case .takingOver: return "taking over"
        case .encoded(let encoded): return encoded.kind
        }
    }

    /// A checkpoint as it best travels: compressed when that makes it smaller (issue 5: memory
    /// pages are mostly zeros and repeats), as it is otherwise; `packer` is its stream's.
    public static func packing(epoch: UInt64, checkpoint bytes: [UInt8], with packer: inout StreamPacker) -> WireMessage {
        let packed = packer.pack(bytes)
        guard packed.encoding != .raw else { return .checkpoint(epoch: epoch, bytes: bytes) }
        return .compressedCheckpoint(epoch: epoch, encoding: packed.encoding, size: packed.size, bytes: packed.bytes)
    }

    /// The checkpoint this message carries, expanded; nil for other messages.
    public func unpackedCheckpoint() throws(BlockEncodingError) -> (epoch: UInt64, bytes: [UInt8])? {
        switch self {
        case .checkpoint(let epoch, let bytes): return (epoch, bytes)
        case .compressedCheckpoint(let epoch, let encoding, let size, let bytes):
            guard encoding == .lz4 || encoding == .zstd else { throw .corrupt("a checkpoint compressed as \(encoding)") }
            return (epoch, try PackedBytes(encoding: encoding, size: size, bytes: bytes).unpacked())
        default: return nil
        }
    }
}

/// Bytes as they best travel: compressed with lz4 or zstd when that makes them smaller (issue 5:
/// memory is mostly zeros and repeats), as they are otherwise.
public struct PackedBytes: Equatable, Sendable {
    /// `.raw`, `.lz4` or `.zstd`.
    public var encoding: BlockEncoding
    /// The unpacked size.
    public var size: UInt32
    public var bytes: [UInt8]

    public init(encoding: BlockEncoding, size: UInt32, bytes: [UInt8]) {
        self.encoding = encoding
        self.size = size
        self.bytes = bytes
    }

    /// Packed on its own, the smaller of lz4 and zstd (a stream of messages uses a `StreamPacker`).
    public init(packing bytes: [UInt8]) {
        var packer = StreamPacker()
        self = packer.pack(bytes)
    }

    public func unpacked() throws(BlockEncodingError) -> [UInt8] {
        switch encoding {
        case .raw:
            guard bytes.count == Int(size) else { throw .sizeMismatch(expected: Int(size), found: bytes.count) }
            return bytes
        case .lz4, .zstd: return try BlockCodec.decode(encoding, bytes, count: Int(size))
        default: throw .corrupt("bytes packed as \(encoding)")
        }
    }
}
