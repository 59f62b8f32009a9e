import Dispatch
import NIOCore
import UnderstudyCheckpoint
import UnderstudyCore
import UnderstudyEventLog
import UnderstudyMachine
import UnderstudyReplication

/// `remus`, `llm`: a checkpoint taken at a suspension and sent, off the pause, as the blocks that
/// differ from the primary's copy of the backup (`BackupCopy`), which moves on with it.
final class CheckpointSender: @unchecked Sendable {
    /// Checkpoints sent on the active connection, the seed's last being 1. The machine's thread only.
    private(set) var epoch: UInt64 = 0
    /// The machine's thread only.
    private let capture: CheckpointCapture
    /// The sender queue only.
    private let backupCopy: BackupCopy
    /// The sender queue only: one compressor for the stream, not both on every checkpoint.
    private var packer = StreamPacker()
    private let sender: DispatchQueue
    /// `llm`: the log, flushed ahead of each checkpoint, which starts where it stands.
    private let recording: RecordingWorld?
    private let link: BackupLink
    private let metrics: ReplicationMetrics

    init(
        capture: CheckpointCapture, backupCopy: BackupCopy, sender: DispatchQueue, recording: RecordingWorld?, link: BackupLink,
        metrics: ReplicationMetrics
    ) {
        self.capture = capture
        self.backupCopy = backupCopy
        self.sender = sender
        self.recording = recording
        self.link = link
        self.metrics = metrics
    }

    /// The machine's thread: a new backup was seeded; its seed was checkpoint 1.
    func startOver() { epoch = 1 }

    /// The machine's thread, at a suspension: the next checkpoint, for `channel`.
    func send(_ machine: Machine, to channel: Channel) throws {
        try recording?.flush()
        let began = ContinuousClock.now
        let captured = try capture.capture(machine, logPosition: recording?.position ?? 0)
        epoch += 1
        let sent = epoch
        link.checkpointSent()
        metrics.capture.recordNanoseconds((ContinuousClock.now - began).nanoseconds)
        metrics.pages.record(captured.pageCount)
        metrics.epochs.increment()
        let (metrics, backupCopy) = (metrics, backupCopy)
        sender.async { [self, weak link] in
            defer { captured.recycle() }
            let message: WireMessage
            do {
                message = .blockCheckpoint(epoch: sent, patch: packer.pack(try backupCopy.patch(for: captured).encoded()))
            } catch {
                link?.refuse(channel, because: "\(error)")  // not reachable: a seed always comes first
                return
            }
            metrics.stateSent(message)
            channel.writeAndFlush(WireCodec.encoded(message, allocator: channel.allocator), promise: nil)
        }
    }
}
