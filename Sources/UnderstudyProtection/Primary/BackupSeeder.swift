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
    /// Each pre-copy is numbered, and names its connection by reference: an identifier of a
    /// connection since freed could be a new connection's, which would then wait for a copy
    /// nobody makes.
    private enum Precopy {
        case none
        case copying(Channel, seed: UInt64)
        case copied(Channel)

        func isCopying(seed: UInt64) -> Bool {
            if case .copying(_, let current) = self { return current == seed }
            return false
        }
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
    /// The sender queue only: the seeds' parts are one stream.
    private var packer = StreamPacker()
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
    private var seeds: UInt64 = 0

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

    /// No part of a pre-copy under way reads guest memory after this (it may be going away);
    /// the caller then waits for the sender queue.
    func stop() { lock.withLock { precopy = .none } }

    /// The machine's thread, at a suspension while `channel` awaits its seed.
    func suspended(_ machine: Machine, seeding channel: Channel) throws {
        switch lock.withLock({ precopy }) {
        case .copying(let copying, _) where copying === channel: break  // the sender asks again once the copy is out
        case .copied(let copied) where copied === channel: try finish(channel, machine)
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
        let seed = lock.withLock { () -> UInt64 in
            seeds += 1
            precopy = .copying(channel, seed: seeds)
            return seeds
        }
        logger.notice("seeding the backup: copying memory while the guest runs", metadata: ["bytes": "\(memory.count)"])
        let run = PrecopyRun(
            memory: UnsafeSendable(memory), rest: rest, channel: channel, seed: seed,
            partCount: max(1, (memory.count / Checkpoint.pageSize + Self.partPages - 1) / Self.partPages))
        sender.async { [self] in
            backupCopy.startOver()
            for part in 0..<min(Self.partsInFlight, run.partCount) { send(part, of: run) }
        }
    }

    /// Pages per pre-copy part: 4 MiB, a frame the event loops encode and decode in milliseconds,
    /// so heartbeats keep passing both ways however large the memory.
    private static let partPages = 1_024
    /// Parts written but not yet on the wire: what bounds the seed's memory on the primary.
    private static let partsInFlight = 2

    /// A pre-copy under way: the guest's memory, read in place while it runs (the pages it writes
    /// meanwhile are tracked and go in checkpoint 1).
    private struct PrecopyRun: @unchecked Sendable {
        let memory: UnsafeSendable<UnsafeRawBufferPointer>
        let rest: MachineState
        let channel: Channel
        let seed: UInt64
        let partCount: Int
        let began = ContinuousClock.now
    }

    /// The sender queue: part `index` of checkpoint 0, and once it is on the wire, the part
    /// `partsInFlight` after it; after the last, the machine is asked for checkpoint 1. A newer
    /// seed, or the connection's end, stops the chain.
    private func send(_ index: Int, of run: PrecopyRun) {
        guard index < run.partCount, lock.withLock({ precopy.isCopying(seed: run.seed) }), run.channel.isActive else { return }
        let memory = run.memory.value
        let pages = UInt32(index * Self.partPages)..<UInt32(min((index + 1) * Self.partPages, memory.count / Checkpoint.pageSize))
        let part = Checkpoint.part(of: memory, pages: pages, first: index == 0, rest: run.rest, moduleHash: moduleHash, logPosition: 0)
        do {
            try backupCopy.advance(by: part)
        } catch {
            return link.refuse(run.channel, because: "the pre-copy does not apply to the primary's copy of the backup: \(error)")
        }
        let message = WireMessage.packing(epoch: 0, checkpoint: CheckpointCodec.encode(part), with: &packer)
        metrics.stateSent(message)
        let written = run.channel.writeAndFlush(WireCodec.encoded(message, allocator: run.channel.allocator))
        guard index + 1 < run.partCount else {
            return written.whenSuccess { [self] in
                lock.withLock { if precopy.isCopying(seed: run.seed) { precopy = .copied(run.channel) } }
                logger.notice(
                    "seeding the backup: memory copied and sent; the pages written meanwhile follow",
                    metadata: ["bytes": "\(memory.count)", "millis": "\((ContinuousClock.now - run.began).milliseconds)"])
                suspension.request()
            }
        }
        let quarter = max(run.partCount / 4, 1)
        if memory.count >= 64 << 20, (index + 1) % quarter == 0 {
            logger.notice("seeding the backup", metadata: ["copied": "\(((index + 1) * Self.partPages * Checkpoint.pageSize) >> 20) of \(memory.count >> 20) MiB"])
        }
        written.whenSuccess { [self] in sender.async { self.send(index + Self.partsInFlight, of: run) } }
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
        // Encoded here, the machine stopped for it anyway: the pages written during a pre-copy
        // can be hundreds of MiB, which would hold the event loop and the heartbeats behind it.
        channel.writeAndFlush(WireCodec.encoded(seed, allocator: channel.allocator), promise: nil)
    }
}

/// A value the sender queue may hold though the compiler cannot prove it safe (the pre-copy's
/// view of guest memory; see `CheckpointCapture.beginPrecopy`).
private struct UnsafeSendable<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}
