import Dispatch
import Logging
import NIOCore
import UnderstudyCheckpoint
import UnderstudyCore
import UnderstudyEventLog
import UnderstudyMachine
import UnderstudyReplication

/// `active`: the backup runs the guest too, on the log (`LogStream`), and output waits for the
/// backup to hold its entry. Every `syncInterval` both machines stop at one log position and
/// compare (a sync point); where the backup differs, it is sent the blocks that do (FGBI), taken
/// from the primary's copy of it (`BackupCopy`).
final class ActiveSyncStream: BackupStream, @unchecked Sendable {
    let mode = ReplicationMode.active
    private let log: LogStream
    private let recording: RecordingWorld
    /// The machine's thread only.
    private let capture: CheckpointCapture
    /// The sender queue only: the repairer.
    private let backupCopy: BackupCopy
    private let sender: DispatchQueue
    private let link: BackupLink
    private let metrics: ReplicationMetrics
    private let logger: Logger
    /// What a sync that finds differences compares and repairs in.
    private let blockSize: Int
    /// Every sync also compares the whole state (tests, diagnosis).
    private let verifySyncs: Bool
    /// Syncs sent on the active connection, the seed's last checkpoint being 1. The machine's thread only.
    private var lastSync: UInt64 = 0

    init(
        log: LogStream, recording: RecordingWorld, capture: CheckpointCapture, backupCopy: BackupCopy, sender: DispatchQueue,
        link: BackupLink, metrics: ReplicationMetrics, logger: Logger, blockSize: Int, verifySyncs: Bool
    ) {
        self.log = log
        self.recording = recording
        self.capture = capture
        self.backupCopy = backupCopy
        self.sender = sender
        self.link = link
        self.metrics = metrics
        self.logger = logger
        self.blockSize = blockSize
        self.verifySyncs = verifySyncs
    }

    func startOver(seededAt logPosition: UInt64) -> UInt64 {
        lastSync = 1
        return logPosition
    }

    /// A sync point. Sent from here, before the guest resumes, so that it is on the wire ahead of
    /// every log entry after it (`FollowedLog` relies on that order). One at a time: a suspension
    /// while one is unanswered is not a sync, and the backup moves past it.
    func suspended(_ machine: Machine, streamingTo channel: Channel) throws {
        guard link.allCheckpointsApplied else { return }
        try recording.flush()
        let began = ContinuousClock.now
        let position = recording.position
        let captured = try capture.capture(machine, logPosition: position)
        let checkpoint = captured.checkpoint!
        let dirty = (checkpoint.pages.map(\.index) + checkpoint.zeroPages).sorted()
        let stateBytes = StateSync.stateBytes(of: checkpoint)
        let (digest, whole) = machine.withLinearMemory { memory in
            (
                StateSync.digest(memory: memory, dirty: dirty, stateBytes: stateBytes),
                verifySyncs ? StateSync.wholeState(memory: memory, stateBytes: stateBytes) : nil
            )
        }
        lastSync += 1
        let sync = lastSync
        link.checkpointSent()
        let message = WireMessage.syncPoint(
            SyncPoint(
                sync: sync, position: position, dirtyPages: UInt32(dirty.count), digest: digest,
                blockSize: UInt16(blockSize), wholeState: whole))
        metrics.stateSent(message)
        metrics.syncs.increment()
        metrics.pages.record(dirty.count)
        // Queued before the message goes out: the answer's handling queues behind it.
        sender.async { [weak link, backupCopy] in
            do {
                try backupCopy.pend(sync: sync, captured: captured, stateBytes: stateBytes)
            } catch {
                link?.refuse(channel, because: "\(error)")
            }
        }
        channel.writeAndFlush(message, promise: nil)
        metrics.capture.recordNanoseconds((ContinuousClock.now - began).nanoseconds)
    }

    func logHeld(below position: UInt64, on channel: Channel) throws {
        try log.held(below: position, on: channel)
    }

    func syncMatched(_ sync: UInt64, on channel: Channel) throws {
        answered(sync: sync, on: channel) { repairer in try repairer.matched(sync: sync) }
    }

    func syncDiffers(_ sync: UInt64, blockSize: UInt16, stateDigest: UInt64, hashes: [UInt8], on channel: Channel) throws {
        answered(sync: sync, on: channel) { [expectedBlockSize = self.blockSize, metrics, logger] repairer in
            guard Int(blockSize) == expectedBlockSize else { throw ProtocolViolation("sync hashes in \(blockSize)-byte blocks, not \(expectedBlockSize)") }
            let pages = try PageBlockHashes.decode(hashes, blockSize: Int(blockSize))
            let repair = try repairer.repair(sync: sync, backupPages: pages, backupStateDigest: stateDigest)
            let message = WireMessage.syncRepair(sync: sync, repair: PackedBytes(packing: repair.encoded()))
            let bytes = metrics.stateSent(message)
            metrics.repairBytes.increment(by: bytes)
            metrics.divergences.increment()
            metrics.repairedBlocks.increment(by: Int64(repair.blocks.count))
            channel.writeAndFlush(message, promise: nil)
            logger.warning(
                "sync found the backup diverged; sending the blocks that differ",
                metadata: [
                    "sync": "\(sync)", "blocks": "\(repair.blocks.count)", "blockSize": "\(blockSize)",
                    "globalsOrDevices": "\(repair.state.isEmpty ? "agreed" : "differed")", "bytes": "\(bytes)",
                ])
        }
    }

    /// The event loop: the backup answered sync `sync`; `handle` runs on the sender queue, where
    /// the repairer lives, and the next sync may be taken once it has.
    private func answered(sync: UInt64, on channel: Channel, _ handle: @escaping @Sendable (BackupCopy) throws -> Void) {
        sender.async { [weak self] in
            guard let self, self.link.isActive(channel) else { return }
            do {
                try handle(self.backupCopy)
            } catch {
                // No next sync on this connection: it is refused, and a new seed starts over.
                return self.link.refuse(channel, because: "\(error)")
            }
            // Only while still this connection's: a stale answer must not pace another's syncs.
            self.link.checkpointApplied(on: channel)
        }
    }
}
