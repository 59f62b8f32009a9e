import Foundation
import Logging
import NIOCore
import UnderstudyCore
import UnderstudyEventLog
import UnderstudyReplication

/// The primary role's decisions (`PrimaryRoleKeeper`, over `PrimaryRole`) carried out on the
/// machine's output: hold it for the seeded backup from a marker the backup is told of, release
/// everything when this primary holds the machine alone, or drop it all and exit when the role
/// is lost.
final class OutputRole: @unchecked Sendable {
    private let holding: OutputHoldingWorld
    private let link: BackupLink
    /// `llm`, `active`: flushed before the marker, which is a log position.
    private let recording: RecordingWorld?
    private let suspension: SuspensionRequest
    private let mode: ReplicationMode
    /// What the process gives up for the role before it exits (the service IP).
    private let beforeStandingDown: @Sendable () -> Void
    /// What it does instead of exiting, if anything (becoming a standby).
    private let afterStandingDown: @Sendable () -> Void
    private let logger: Logger
    /// The role's request to start holding, carried out at the next suspension: made on the
    /// role's queue, taken on the machine's thread; guarded by `lock`.
    private let lock = NSLock()
    private var pendingHold: (generation: UInt64, backup: String?)?
    /// A planned handover's part in standing down: true when a handover was under way and
    /// finishes the process itself (the role was lost to the backup it was handed to).
    var handoverFinishes: (@Sendable (_ reason: String) -> Bool)?

    init(
        holding: OutputHoldingWorld, link: BackupLink, recording: RecordingWorld?, suspension: SuspensionRequest, mode: ReplicationMode,
        beforeStandingDown: @escaping @Sendable () -> Void, afterStandingDown: @escaping @Sendable () -> Void, logger: Logger
    ) {
        self.holding = holding
        self.link = link
        self.recording = recording
        self.suspension = suspension
        self.mode = mode
        self.beforeStandingDown = beforeStandingDown
        self.afterStandingDown = afterStandingDown
        self.logger = logger
    }

    /// What the role's actions do here, run on the role's queue.
    var effects: PrimaryRoleKeeper.Effects {
        .init(
            startHolding: { [weak self] generation, backup in self?.requestHolding(generation: generation, for: backup) },
            releaseEverything: { [weak self] in self?.releaseEverything() },
            standDown: { [weak self] reason in self?.standDown(reason) })
    }

    /// The machine's thread, at a suspension: starts holding if the role asked to. True if it
    /// did: the suspension was for that.
    func startRequestedHolding() throws -> Bool {
        guard let hold = lock.withLock({ () -> (generation: UInt64, backup: String?)? in
            defer { pendingHold = nil }
            return pendingHold
        }) else { return false }
        try recording?.flush()
        startHolding(generation: hold.generation, for: hold.backup)
        return true
    }

    /// The role's queue: output is to wait for `backup` (nil: for nobody, until the next
    /// generation is won) from the next suspension on.
    private func requestHolding(generation: UInt64, for backup: String?) {
        lock.withLock { pendingHold = (generation, backup) }
        suspension.request()
    }

    /// The machine's thread, at a suspension: output waits from here on; the backup is told
    /// where from, with the generation it now protects.
    private func startHolding(generation: UInt64, for backup: String?) {
        let target = link.startProtecting(by: backup)
        holding.protect(acknowledgedBelow: target?.acknowledged ?? 0)
        guard let (channel, _) = target else {
            logger.notice("holding output: its backup is gone", metadata: ["generation": "\(generation)"])
            return
        }
        let position = holding.positionOfNextOutput()
        link.markerSent(generation: generation, position: position, on: channel)
        channel.writeAndFlush(WireMessage.protecting(generation: generation, position: position), promise: nil)
        logger.notice("holding output for the backup", metadata: ["mode": "\(mode)", "generation": "\(generation)", "from": "\(position)"])
    }

    /// The role's queue: the primary holds the machine alone.
    private func releaseEverything() {
        holding.unprotect()
        link.stopProtecting()
    }

    /// The role's queue: another process holds the role, or the store could not be reached in
    /// time. Nothing held may leave; the process exits without a goodbye, so a protecting backup
    /// takes the exit for a death and its claim decides.
    private func standDown(_ reason: String) {
        holding.dropEverything()
        if handoverFinishes?(reason) == true { return }
        beforeStandingDown()
        FileHandle.standardError.write(Data("understudy: standing down: \(reason)\n".utf8))
        afterStandingDown()
        exit(StandDown.exitCode)
    }
}
