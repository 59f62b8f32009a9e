import Dispatch
import Foundation
import Logging
import NIOCore
import UnderstudyCore
import UnderstudyEventLog
import UnderstudyMachine
import UnderstudyReplication

/// A planned migration, the primary's side (`understudy migrate`): at a suspension the guest is
/// stopped for good; what the backup needs to hold everything goes to it (in `remus` a last
/// checkpoint, otherwise the rest of the log), then `handover` names that position. The backup
/// wins the next generation and says `takingOver`; this process then writes out every reply
/// the backup's acknowledgements released, gives up the service IP and exits 0 (or becomes the
/// new primary's standby: `primary --replication`).
///
/// Once `handover` is sent the guest never runs here again unless this process wins the next
/// generation itself: a backup that does not answer in time is given up like a lost one, and
/// the role decides (won alone: the guest resumes; lost: the backup serves, this one stands down).
final class PlannedHandover: @unchecked Sendable {
    static let patience: Duration = .seconds(10)

    private let link: BackupLink
    private let stream: any BackupStream
    private let holding: OutputHoldingWorld
    private let recording: RecordingWorld?
    private let role: PrimaryRoleKeeper
    private let suspension: SuspensionRequest
    private let beforeLeaving: @Sendable () -> Void
    private let afterLeaving: @Sendable () -> Void
    private let logger: Logger
    private let lock = NSLock()
    private var requested: MigrationRequest?
    private var answer: UInt64?
    /// Set once `handover` is written: from then on a lost role is the handover done.
    private var sent = false
    /// Why the role was lost while the handover waited for the backup's answer.
    private var lostRole: String?
    private let answered = DispatchSemaphore(value: 0)

    init(
        link: BackupLink, stream: any BackupStream, holding: OutputHoldingWorld, recording: RecordingWorld?, role: PrimaryRoleKeeper,
        suspension: SuspensionRequest, beforeLeaving: @escaping @Sendable () -> Void, afterLeaving: @escaping @Sendable () -> Void,
        logger: Logger
    ) {
        self.link = link
        self.stream = stream
        self.holding = holding
        self.recording = recording
        self.role = role
        self.suspension = suspension
        self.beforeLeaving = beforeLeaving
        self.afterLeaving = afterLeaving
        self.logger = logger
    }

    /// Any thread: hand over at the next suspension.
    func request(_ migration: MigrationRequest) {
        lock.withLock { requested = migration }
        suspension.request()
    }

    /// The event loop: the backup won `generation` for the handover.
    func takingOver(generation: UInt64) {
        lock.withLock { answer = generation }
        answered.signal()
    }

    /// The role's queue, standing down: true if a handover was under way. The backup won the
    /// generation without its `takingOver` reaching here (the connection dropped first, say, when
    /// a starved host missed heartbeats): what it acknowledged is its, so the handover is done and
    /// the machine's thread, waiting for the answer, finishes it.
    func roleLost(_ reason: String) -> Bool {
        lock.withLock {
            guard sent else { return false }
            lostRole = reason
            answered.signal()
            return true
        }
    }

    /// The machine's thread, at a suspension: true if it was for a handover that did not happen
    /// (the guest resumes); a handover that happens ends the process.
    func suspended(_ machine: Machine) throws -> Bool {
        guard let migration = lock.withLock({ () -> MigrationRequest? in
            defer { requested = nil }
            return requested
        }) else { return false }
        guard role.currentStanding == .protected, let channel = link.protectingChannel else {
            logger.warning("not handing over: no backup protects the machine", metadata: ["migration": "\(migration.id)"])
            return true
        }
        let stopped = ContinuousClock.now
        let position: UInt64
        if stream.mode == .remus {
            try stream.suspended(machine, streamingTo: channel)
            position = holding.positionOfNextOutput() - 1  // the checkpoint just sent
        } else {
            try recording?.flush()
            position = holding.positionOfNextOutput()
        }
        lock.withLock { sent = true }
        channel.writeAndFlush(WireMessage.handover(generation: role.fencing.generation, position: position), promise: nil)
        logger.notice("handing the machine over: its guest is stopped", metadata: ["position": "\(position)", "migration": "\(migration.id)"])
        guard answered.wait(timeout: .now() + .nanoseconds(Int(Self.patience.nanoseconds))) == .success,
            let taken = lock.withLock({ answer.map { "\($0)" } ?? lostRole.map { "the next (\($0))" } })
        else {
            lock.withLock { sent = false }
            logger.error("the backup did not take over in time; giving it up, and the generation decides who serves")
            link.refuse(channel, because: "the handover was not taken within \(Self.patience.milliseconds) ms")
            return true
        }
        let delivered = holding.deliverEverything(by: .now + .seconds(2))
        beforeLeaving()
        logger.notice(
            "handed the machine over",
            metadata: [
                "generation": "\(taken)", "stoppedMillis": "\((ContinuousClock.now - stopped).milliseconds)",
                "repliesDelivered": "\(delivered ? "all" : "not all within 2 s")",
            ])
        afterLeaving()
        exit(0)
    }
}
