import NIOCore
import UnderstudyCore
import UnderstudyMachine
import UnderstudyReplication

/// `llm`: the log goes to the backup as the guest consumes the world (`LogStream`), and output
/// waits for the backup to hold its entry; a checkpoint every `checkpointInterval`, or once
/// `logBytesPerCheckpoint` of log has gone since the last, bounds what a takeover replays.
final class LLMStream: BackupStream, @unchecked Sendable {
    let mode = ReplicationMode.llm
    private let checkpoints: CheckpointSender
    private let log: LogStream
    private let link: BackupLink
    private let suspension: SuspensionRequest
    private let logBytesPerCheckpoint: Int
    /// The machine's thread only.
    private var logBytesSinceCheckpoint = 0

    init(checkpoints: CheckpointSender, log: LogStream, link: BackupLink, suspension: SuspensionRequest, logBytesPerCheckpoint: Int) {
        self.checkpoints = checkpoints
        self.log = log
        self.link = link
        self.suspension = suspension
        self.logBytesPerCheckpoint = logBytesPerCheckpoint
        log.batchSent = { [unowned self] bytes in logSent(bytes: bytes) }
    }

    func startOver(seededAt logPosition: UInt64) -> UInt64 {
        checkpoints.startOver()
        logBytesSinceCheckpoint = 0
        return logPosition
    }

    func suspended(_ machine: Machine, streamingTo channel: Channel) throws {
        try checkpoints.send(machine, to: channel)
        logBytesSinceCheckpoint = 0
    }

    func logHeld(below position: UInt64, on channel: Channel) throws {
        try log.held(below: position, on: channel)
    }

    /// The machine's thread: a batch of `bytes` of log went to the backup.
    private func logSent(bytes: Int) {
        logBytesSinceCheckpoint += bytes
        if logBytesSinceCheckpoint > logBytesPerCheckpoint && link.allCheckpointsApplied {
            logBytesSinceCheckpoint = 0
            suspension.request()
        }
    }
}
