import Dispatch
import Foundation
import Logging
import NIOCore
import UnderstudyCheckpoint
import UnderstudyCore
import UnderstudyEventLog
import UnderstudyMachine
import UnderstudyReplication

/// Seeds a backup that has just connected, at the machine's suspensions, the same in every mode.
/// By pre-copy: checkpoint 0 is the whole memory, copied and sent while the guest runs on;
/// checkpoint 1, at the next suspension, is the pages written meanwhile, and makes the backup
/// exact. Without kernel dirty tracking there is no sound way to copy a running guest, and
/// checkpoint 1 is taken whole, stopped. With checkpoint 1 the backup receives the mode's stream
/// (output waits for it only once the role says so).
final class BackupSeeder: @unchecked Sendable {
    private enum Precopy: Equatable {
        case none
        case copying(ObjectIdentifier)
        case copied(ObjectIdentifier)
    }

    private let link: BackupLink
    private let stream: any BackupStream
    private let holding: OutputHoldingWorld
    /// `llm`, `active`: what precedes the seed is flushed into nowhere; the seed starts where it stands.
    private let recording: RecordingWorld?
    /// The machine's thread only.
    private let capture: CheckpointCapture
    /// The sender queue only.
    private let backupCopy: BackupCopy
    private let sender: DispatchQueue
    private let suspension: SuspensionRequest
    private let moduleHash: String
    private let metrics: ReplicationMetrics
    private let logger: Logger
    /// The machine's thread only.
    private var seedStarted: ContinuousClock.Instant?
    /// Where a pre-copy seed stands: begun and finished on the machine's thread, marked copied by
    /// the sender queue; guarded by `lock`.
    private let lock = NSLock()
    private var precopy = Precopy.none

    init(
        link: BackupLink, stream: any BackupStream, holding: OutputHoldingWorld, recording: RecordingWorld?, capture: CheckpointCapture,
        backupCopy: BackupCopy, sender: DispatchQueue, suspension: SuspensionRequest, moduleHash: String, metrics: ReplicationMetrics,
        logger: Logger
    ) {
        self.link = link
        self.stream = stream
        self.holding = holding
        self.recording = recording
        self.capture = capture
        self.backupCopy = backupCopy
        self.sender = sender
        self.suspension = suspension
        self.moduleHash = moduleHash
        self.metrics = metrics
        self.logger = logger
    }

    /// The machine's thread, at a suspension while `channel` awaits its seed.
    func suspended(_ machine: Machine, seeding channel: Channel) throws {
        switch lock.withLock({ precopy }) {
        case .copying(ObjectIdentifier(channel)): break  // the sender asks again once the copy is out
        case .copied(ObjectIdentifier(channel)): try finish(channel, machine)
        default: try begin(channel, machine)  // nothing begun, or for a connection since lost
        }
    }

    /// Checkpoint 0 by pre-copy, or, without kernel dirty tracking, checkpoint 1 at once.
    private func begin(_ channel: Channel, _ machine: Machine) throws {
        try recording?.flush()  // what precedes the seed is in it, and goes nowhere
        capture.startOver()
        seedStarted = ContinuousClock.now
        guard let (memory, rest) = try capture.beginPrecopy(machine) else {
            return try finish(channel, machine)
        }
        let copying = Precopy.copying(ObjectIdentifier(channel))
        lock.withLock { precopy = copying }
        let (logger, metrics, suspension, moduleHash) = (logger, metrics, suspension, moduleHash)
        let memoryBox = UnsafeSendable(memory)
        logger.notice("seeding the backup: copying memory while the guest runs", metadata: ["bytes": "\(memory.count)"])
        sender.async { [weak self] in
            let memory = memoryBox.value
            let began = ContinuousClock.now
            var copy = [UInt8]()
            copy.reserveCapacity(memory.count)
            let chunk = 4 << 20
            var reported = 0
            for start in stride(from: 0, to: memory.count, by: chunk) {
                copy.append(contentsOf: UnsafeRawBufferPointer(rebasing: memory[start..<min(start + chunk, memory.count)]))
                let percent = copy.count * 100 / max(memory.count, 1)
                if memory.count >= 64 << 20 && percent >= reported + 25 {
                    reported = percent
                    logger.notice("seeding the backup", metadata: ["copied": "\(copy.count >> 20) of \(memory.count >> 20) MiB"])
                }
            }
            var state = rest
            state.memory = copy
            let bytes = CheckpointCodec.encode(Checkpoint.full(of: state, moduleHash: moduleHash, logPosition: 0))
            let message = WireMessage.packing(epoch: 0, checkpoint: bytes)
            self?.backupCopy.startOver(from: state)
            let sent = metrics.stateSent(message)
            channel.writeAndFlush(message, promise: nil)
            logger.notice(
                "seeding the backup: memory copied and sent; the pages written meanwhile follow",
                metadata: [
                    "bytes": "\(bytes.count)", "sent": "\(sent)",
                    "millis": "\((ContinuousClock.now - began).milliseconds)",
                ])
            if let self {
                // Only if no newer seed has begun since (this one's connection may be gone).
                lock.withLock { if precopy == copying { precopy = .copied(ObjectIdentifier(channel)) } }
            }
            suspension.request()
        }
    }

    /// Checkpoint 1 of a new backup, delta after a pre-copy or whole; from its log position on,
    /// the mode's stream flows (output waits for the backup only once the role says so).
    private func finish(_ channel: Channel, _ machine: Machine) throws {
        lock.withLock { precopy = .none }
        try recording?.flush()
        let position = recording?.position ?? 0
        let captured = try capture.capture(machine, logPosition: position)
        let bytes = CheckpointCodec.encode(captured.checkpoint!)
        let pages = captured.pageCount
        // The backup's copy is complete with this; the sender queue keeps it from now on.
        sender.async { [weak link, backupCopy] in
            defer { captured.recycle() }
            do {
                if captured.checkpoint!.kind == .full { backupCopy.startOver() }
                try backupCopy.advance(by: captured.checkpoint!)
            } catch {
                // Every later patch would be XORed against the wrong copy: seed again instead.
                link?.refuse(channel, because: "the seed does not apply to the primary's copy of the backup: \(error)")
            }
        }
        // Epochs restart with each backup: output held for another's (the primary settling its
        // generation) would be released by the wrong numbers. It seeds again once alone.
        guard !holding.isProtected else {
            link.abandonSeed(of: channel)
            return link.refuse(channel, because: "the primary is settling its generation; it will seed this backup again")
        }
        let acknowledged = stream.startOver(seededAt: position)
        guard link.activate(channel, acknowledgedBelow: acknowledged) else { return }
        let seed = WireMessage.checkpoint(epoch: 1, bytes: bytes)
        metrics.stateSent(seed)
        metrics.epochs.increment()
        logger.notice(
            "seed sent",
            metadata: [
                "pages": "\(pages)", "bytes": "\(bytes.count)", "logPosition": "\(position)",
                "sinceSeedStartMillis": "\(seedStarted.map { (ContinuousClock.now - $0).milliseconds } ?? 0)",
            ])
        channel.writeAndFlush(seed, promise: nil)
    }
}

/// A value the sender queue may hold though the compiler cannot prove it safe (the pre-copy's
/// view of guest memory; see `CheckpointCapture.beginPrecopy`).
private struct UnsafeSendable<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}
