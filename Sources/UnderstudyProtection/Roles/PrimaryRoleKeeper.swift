import Dispatch
import Foundation
import Logging
import UnderstudyReplication

/// Runs the primary's `PrimaryRole` in the process: its events come from the replication
/// connection's event loop, the acknowledgement watchdog and the store's answers, and are taken
/// in order on one queue; its actions become effects on the replicator (hold, release, stand
/// down) and writes to the store.
public final class PrimaryRoleKeeper: @unchecked Sendable {
    /// What the role's actions do to the machine; set before the machine runs.
    public struct Effects: Sendable {
        /// Output waits for `backup` (nil: for nobody) from the next suspension on; frames carry `generation`.
        public var startHolding: @Sendable (_ generation: UInt64, _ backup: String?) -> Void
        /// Everything held leaves; later output goes straight out.
        public var releaseEverything: @Sendable () -> Void
        /// Drop what is held, close the listeners, exit non-zero.
        public var standDown: @Sendable (_ reason: String) -> Void

        public init(
            startHolding: @escaping @Sendable (UInt64, String?) -> Void, releaseEverything: @escaping @Sendable () -> Void,
            standDown: @escaping @Sendable (String) -> Void
        ) {
            self.startHolding = startHolding
            self.releaseEverything = releaseEverything
            self.standDown = standDown
        }
    }

    public let fencing = FencingToken()
    public let holder: String
    private let queue = DispatchQueue(label: "understudy.primary-role")
    private let writer: GenerationWriter
    private let logger: Logger
    /// The queue only.
    private var role: PrimaryRole
    private var effects: Effects?
    /// What other threads may ask about the role, kept as the queue changes it.
    private let lock = NSLock()
    private var standing = PrimaryRole.Standing.claiming
    /// Signalled once, when the first claim is settled (won, lost or given up).
    private let claimed = DispatchSemaphore(value: 0)
    private var claimSettled = false

    public init(store: any GenerationStore, holder: String, fenceTimeout: Duration, logger: Logger) {
        self.holder = holder
        self.logger = logger
        writer = GenerationWriter(store: store, queue: queue)
        role = PrimaryRole(holder: holder, fenceTimeoutNanos: UInt64(fenceTimeout.nanoseconds))
    }

    public var currentStanding: PrimaryRole.Standing { lock.withLock { standing } }
    /// A new backup may be connected and seeded only by a primary that serves alone: one that
    /// holds output (fencing) must settle its generation first.
    public var mayConnectBackup: Bool { currentStanding == .alone }

    /// Claims the generation after `observed`; returns once this process holds one alone, throws
    /// the reason when it lost or could not reach the store within the fence timeout.
    public func claim(after observed: UInt64) throws {
        queue.async { [self] in perform(role.start(after: observed, now: GenerationWriter.now)) }
        claimed.wait()
        if case .stoodDown(let reason) = currentStanding { throw StandDown(reason: reason) }
    }

    /// A backup that won `generation` to take over is this primary (`holder` must be the
    /// identity it won with): nothing is written.
    public func adopt(generation: UInt64) {
        queue.sync { perform(role.promoted(holding: generation)) }
    }

    public func start(effects: Effects) { queue.sync { self.effects = effects } }

    /// The guest exited: the machine is let go in the store (best effort, bounded).
    public func letGo() async {
        let generation = queue.sync { role.hasStoodDown ? 0 : role.generation }
        guard generation > 0 else { return }
        let said = await writer.letGo(generation: generation, holder: holder)
        logger.notice("\(said)")
    }

    public func backupSeeded(_ backup: String) { queue.async { [self] in perform(role.backupSeeded(backup)) } }

    public func backupLost() { queue.async { [self] in perform(role.backupLost(now: GenerationWriter.now)) } }

    /// The queue: carries out `actions` in order.
    private func perform(_ actions: [PrimaryRole.Action]) {
        lock.withLock { standing = role.standing }
        for action in actions {
            switch action {
            case .write(let record, let expected):
                logger.notice("claiming the next generation", metadata: ["record": "\(record)", "store": "\(writer.store.location)"])
                writer.write(record, ifGeneration: expected) { [self] answer in
                    switch answer {
                    case .won: perform(role.written(now: GenerationWriter.now))
                    case .lost(let current): perform(role.lost(current: current, now: GenerationWriter.now))
                    case .unreachable(let reason):
                        logger.warning("cannot reach the generation store; holding output meanwhile", metadata: ["reason": "\(reason)"])
                        perform(role.unreachable(reason, now: GenerationWriter.now))
                    }
                }
            case .retryLater: writer.later { [self] in perform(role.retry()) }
            case .startHolding(let generation, let backup):
                fencing.raise(to: generation)
                logger.notice("generation won: output waits for the backup", metadata: ["generation": "\(generation)", "backup": "\(backup ?? "none (gone since)")"])
                effects?.startHolding(generation, backup)
            case .releaseEverything(let generation):
                fencing.raise(to: generation)
                logger.notice("generation won: serving alone", metadata: ["generation": "\(generation)"])
                effects?.releaseEverything()
                settleClaim()
            case .standDown(let reason):
                logger.error("standing down", metadata: ["reason": "\(reason)"])
                effects?.standDown(reason)
                settleClaim()
            }
        }
    }

    private func settleClaim() {
        guard !claimSettled else { return }
        claimSettled = true
        claimed.signal()
    }
}

/// This process lost the primary role, or gave up on the store: it exits non-zero.
public struct StandDown: Error, CustomStringConvertible {
    public let reason: String
    public init(reason: String) { self.reason = reason }
    public var description: String { "standing down: \(reason)" }
    /// The exit status of a process that stood down (EX_TEMPFAIL: another process serves).
    public static let exitCode: Int32 = 75
}
