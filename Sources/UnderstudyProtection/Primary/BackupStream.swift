import NIOCore
import UnderstudyMachine
import UnderstudyReplication

/// What one mode sends a seeded backup, and how it takes the answers that are that mode's
/// (DESIGN.md, "Modes"): `RemusStream`, `LLMStream`, `ActiveSyncStream`. Connecting and seeding
/// are the same in every mode (`BackupLink`, `BackupSeeder`).
protocol BackupStream: AnyObject, Sendable {
    var mode: ReplicationMode { get }

    /// The machine's thread: a backup was just seeded with the state at `logPosition`, and the
    /// stream starts over for it. Returns the position it holds everything below.
    func startOver(seededAt logPosition: UInt64) -> UInt64

    /// The machine's thread, at a suspension: what the mode sends the seeded backup on `channel`.
    func suspended(_ machine: Machine, streamingTo channel: Channel) throws

    /// The event loop: `channel`'s backup holds the log below `position`.
    func logHeld(below position: UInt64, on channel: Channel) throws

    /// The event loop: `channel`'s backup applied checkpoint `epoch` (the seed's are 0 and 1).
    func checkpointApplied(_ epoch: UInt64, on channel: Channel) throws

    /// The event loop: `channel`'s backup found its state at sync point `sync` equal to the primary's.
    func syncMatched(_ sync: UInt64, on channel: Channel) throws

    /// The event loop: `channel`'s backup found its state at sync point `sync` different, and sent
    /// its blocks' hashes.
    func syncDiffers(_ sync: UInt64, blockSize: UInt16, stateDigest: UInt64, hashes: [UInt8], on channel: Channel) throws
}

/// What a mode does with the answers of another.
extension BackupStream {
    func logHeld(below position: UInt64, on channel: Channel) throws { throw ProtocolViolation("log held in \(mode) mode") }

    func checkpointApplied(_ epoch: UInt64, on channel: Channel) throws {}

    func syncMatched(_ sync: UInt64, on channel: Channel) throws { throw ProtocolViolation("a sync answer in \(mode) mode") }

    func syncDiffers(_ sync: UInt64, blockSize: UInt16, stateDigest: UInt64, hashes: [UInt8], on channel: Channel) throws {
        throw ProtocolViolation("a sync answer in \(mode) mode")
    }
}

/// A peer's message that breaks the protocol: the connection is refused with its description.
struct ProtocolViolation: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
