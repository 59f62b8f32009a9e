import NIOCore
import UnderstudyMachine
import UnderstudyReplication

/// `remus`: a checkpoint every epoch; output made during an epoch waits until the backup has
/// applied the checkpoint that ends it.
final class RemusStream: BackupStream, @unchecked Sendable {
    let mode = ReplicationMode.remus
    private let checkpoints: CheckpointSender
    private let link: BackupLink

    init(checkpoints: CheckpointSender, link: BackupLink) {
        self.checkpoints = checkpoints
        self.link = link
    }

    /// The machine's thread: what output made now waits for, the checkpoint after the last sent.
    var positionOfNextOutput: UInt64 { checkpoints.epoch + 1 }

    func startOver(seededAt logPosition: UInt64) -> UInt64 {
        checkpoints.startOver()
        return 1
    }

    func suspended(_ machine: Machine, streamingTo channel: Channel) throws {
        try checkpoints.send(machine, to: channel)
    }

    func checkpointApplied(_ epoch: UInt64, on channel: Channel) throws {
        try link.acknowledged(below: epoch + 1, on: channel)
    }
}
