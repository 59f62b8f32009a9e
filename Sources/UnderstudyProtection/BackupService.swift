import Dispatch
import Foundation
import Logging
import NIOCore
import UnderstudyCheckpoint
import UnderstudyCore
import UnderstudyEventLog
import UnderstudyMachine
import UnderstudyReplication

/// The backup process's replication side: one primary at a time, whose messages are applied in
/// order on a queue of their own (never on the event loop); and the decision to promote. The
/// end of a connection that had been seeded is the primary's death — its kernel closed the
/// socket, or it fell silent past the heartbeat timeout — unless the primary said goodbye
/// (its guest exited) or this backup refused it (a bad message): then there is nothing to take
/// over, and the backup waits for the primary to connect and seed it again.
///
/// Fencing (DESIGN.md, "One primary"): two hosts alone cannot tell a dead primary from a cut link
/// or a paused process, so a backup whose copy protects the primary (`BackupRoleKeeper`) takes
/// over only once it has won the next generation in the store; losing it, it drops the copy and
/// waits to be seeded again.
public final class BackupService: @unchecked Sendable {
    /// What a promotion starts from. Built on the applier queue and handed, whole and untouched,
    /// to the claim's answer and then to the main thread: never shared while changing.
    public struct Promotion: @unchecked Sendable {
        public var mode: ReplicationMode
        public var prepared: PreparedModule
        public var manifest: RecordingManifest
        /// How the primary protected the machine: how it is protected from here on.
        public var protection: ProtectionSettings
        public var state: MachineState
        /// `llm`: the log after the state, to replay before going live; decoded from `heldLog`
        /// once the generation is won.
        public var log: [EventLogEntry] = []
        var heldLog: BackupLog?
        /// `active`: the machine already running, which goes live where it is.
        var follower: ActiveFollower?
        public var epoch: UInt64
        /// When the primary's death was noticed.
        public var detected: ContinuousClock.Instant
        /// The generation this backup won to take over (0 until it has).
        public var generation: UInt64 = 0
        /// A planned handover: when the primary's `handover` arrived (its guest stopped then).
        public var handoverStarted: ContinuousClock.Instant?
    }

    private struct Session {
        let channel: Channel
        let replica: BackupReplica
        /// This end refused a message, or the primary said goodbye: not a death.
        var ended: String?
        /// The highest log position acknowledged on the wire (event loop only).
        var logAcknowledged: UInt64 = 0
        /// The primary's planned handover: where the copy must reach, and when it was asked.
        var handover: (position: UInt64, started: ContinuousClock.Instant)?
        /// The handover's claim has begun: the connection's end is no longer a death.
        var claimingHandover = false
    }

    private let logger: Logger
    private let applier = DispatchQueue(label: "understudy.backup-applier")
    private let lock = NSLock()
    private var session: Session?
    private var promotion: Promotion?
    private let promoted = DispatchSemaphore(value: 0)
    private let metrics = ReplicationMetrics(role: "backup")
    private var listener: ReplicationListener?
    /// Log batches queued on the applier: while any are, later ones queue behind them.
    private var pendingLogBatches = 0

    /// How many service addresses this backup takes over (its `--listen`): a primary whose
    /// machine has another number is refused at once.
    private let listenerCount: Int
    /// Test-only (`--inject-corruption-at-sync`): an `active` follower corrupts its memory there.
    private let corruptAtSync: UInt64?
    /// Test-only (`--inject-stall`): from a point on, handle and acknowledge nothing more, while
    /// the connection still heartbeats — a backup stuck behind its applier.
    public enum StallPoint: String, Sendable, CaseIterable {
        /// Once the module is taken: a seed that never completes.
        case afterModule = "after-module"
        /// Once seeded: a protecting backup that acknowledges nothing.
        case afterSeed = "after-seed"
        /// At a handover: the generation is won, and the connection closed instead of saying
        /// `takingOver` (as when it drops first): the primary learns of it from the generation.
        case beforeTakingOver = "before-taking-over"
    }
    private let stall: StallPoint?
    private var stalled = false
    private let role: BackupRoleKeeper
    /// The machine this backup protects (`--name`); nil takes any.
    private let machine: String?

    public init(
        logger: Logger, role: BackupRoleKeeper, machine: String?, listenerCount: Int, corruptAtSync: UInt64? = nil,
        stall: StallPoint? = nil
    ) {
        self.logger = logger
        self.role = role
        self.machine = machine
        self.listenerCount = listenerCount
        self.corruptAtSync = corruptAtSync
        self.stall = stall
        metrics.protected.record(0)
    }

    public func listen(
        on address: ServiceAddress, security: ReplicationSecurity, heartbeat: HeartbeatTiming, group: EventLoopGroup
    ) async throws -> SocketAddress {
        let listener = try await ReplicationListener.bind(
            address, security: security, group: group, logger: logger, heartbeat: heartbeat, fencing: role.fencing,
            admit: { [self] hello, channel in admit(hello, channel) },
            onMessage: { [self] message, channel in route(message, from: channel) },
            onClose: { [self] channel in applier.async { self.closed(channel) } })
        self.listener = listener
        return listener.localAddress
    }

    /// Blocks until the primary is gone and there is a machine to take over.
    public func waitForPromotion() -> Promotion {
        promoted.wait()
        return lock.withLock { promotion! }
    }

    public func close() async { try? await listener?.close() }

    /// The event loop.
    private func admit(_ hello: WireMessage.Hello, _ channel: Channel) -> String? {
        lock.withLock {
            if promotion != nil { return "this backup has taken over its primary's machine" }
            // A session this side has ended (refused, or said goodbye to) protects nobody, though its
            // close may not have completed yet.
            if let session, session.channel.isActive, session.ended == nil, session.channel !== channel {
                return "this backup already protects a primary"
            }
            if let machine, hello.machine != machine { return "this backup protects machine \(machine), not \(hello.machine)" }
            if let refusal = role.admit(generation: hello.generation) { return refusal }
            // A primary connecting again lived on unprotected: whatever an earlier connection left
            // here is stale, and is dropped.
            session?.replica.follower?.abandon()
            session = Session(channel: channel, replica: BackupReplica(hello: hello, listenerCount: listenerCount))
            return nil
        }
    }

    /// The event loop. Log records are the latency path of `llm` (held output waits for their
    /// acknowledgement), so once the log exists and nothing of it waits on the applier queue they
    /// are checked and acknowledged right here; everything else, in order, on the applier queue.
    private func route(_ message: WireMessage, from channel: Channel) {
        let ordered = message.isLogOrdered
        let direct = lock.withLock { () -> Bool in
            guard ordered else { return false }
            guard pendingLogBatches == 0, let session, session.channel === channel, session.replica.takesLogDirectly else {
                pendingLogBatches += 1
                return false
            }
            return true
        }
        if direct { return handle(message, from: channel) }
        applier.async { [self] in
            handle(message, from: channel)
            if ordered { lock.withLock { pendingLogBatches -= 1 } }
        }
    }

    /// The applier queue, or the event loop for log records (see `route`).
    private func handle(_ message: WireMessage, from channel: Channel) {
        guard let current = lock.withLock({ session }), current.channel === channel, current.ended == nil else { return }
        if case .refusal(let reason) = message {
            logger.notice("the primary ended replication", metadata: ["reason": "\(reason)"])
            lock.withLock { session?.ended = reason }
            return
        }
        let stalls: Bool
        switch stall {
        case .afterSeed: stalls = current.replica.canPromote
        case .afterModule: stalls = current.replica.prepared != nil
        case .beforeTakingOver, nil: stalls = false
        }
        if let stall, stalls {
            let first = lock.withLock { () -> Bool in
                defer { stalled = true }
                return !stalled
            }
            if first { logger.warning("fault injection: \(stall == .afterSeed ? "seeded" : "module taken"); acknowledging nothing more") }
            return
        }
        if case .handover(_, let position) = message {
            logger.notice("the primary hands the machine over", metadata: ["position": "\(position)"])
            lock.withLock { session?.handover = (position, .now) }
            return claimHandoverIfReached(channel)
        }
        do {
            let reply = try current.replica.handle(message)
            switch reply {
            case .checkpointApplied(let epoch):
                metrics.checkpointsApplied.increment()
                if epoch == 1 {
                    logger.notice("seeded; protecting once the primary records it", metadata: ["mode": "\(current.replica.mode)"])
                    startFollowing(current.replica, channel)
                }
            case .logHeld: metrics.logHeld.record(current.replica.heldEntryCount)
            default: break
            }
            if case .logHeld(let position) = reply {
                acknowledgeLog(below: position, on: channel)
            } else if let reply {
                channel.writeAndFlush(reply, promise: nil)
            }
            if let generation = current.replica.reachedMarker() {
                if let refusal = role.protecting(generation: generation) { return refuse(channel, because: refusal) }
                metrics.protected.record(1)
            }
            claimHandoverIfReached(channel)
        } catch {
            refuse(channel, because: "\(error)")
        }
    }

    /// Once the copy holds everything the handover named, claims the next generation as a
    /// takeover; on winning, tells the primary (which then leaves) and serves.
    private func claimHandoverIfReached(_ channel: Channel) {
        let plan = lock.withLock { () -> Promotion? in
            guard let current = session, current.channel === channel, current.ended == nil, !current.claimingHandover,
                let handover = current.handover, current.replica.holds(position: handover.position)
            else { return nil }
            guard var plan = promotionPlan(current.replica, detected: handover.started) else { return nil }
            plan.handoverStarted = handover.started
            session?.claimingHandover = true
            return plan
        }
        guard let plan else { return }
        let withhold = stall == .beforeTakingOver
        claim(plan, channel: channel) { [logger] generation in
            guard !withhold else {
                logger.warning("fault injection: the handover's generation won; closing instead of saying so")
                channel.close(promise: nil)
                return
            }
            channel.writeAndFlush(WireMessage.takingOver(generation: generation), promise: nil)
        }
    }

    /// Log batches are acknowledged from two threads (the event loop, or the applier queue while
    /// earlier ones wait there), and a write from the applier reaches the wire only when the
    /// event loop runs it, possibly after a later batch's: so every acknowledgement is written
    /// on the event loop, and only if it is ahead of the last one written. The primary takes a
    /// backwards acknowledgement for a broken backup.
    private func acknowledgeLog(below position: UInt64, on channel: Channel) {
        guard channel.eventLoop.inEventLoop else {
            return channel.eventLoop.execute { [self] in acknowledgeLog(below: position, on: channel) }
        }
        let ahead = lock.withLock { () -> Bool in
            guard session?.channel === channel, let acknowledged = session?.logAcknowledged, position > acknowledged else { return false }
            session?.logAcknowledged = position
            return true
        }
        if ahead { channel.writeAndFlush(WireMessage.logHeld(position: position), promise: nil) }
    }

    /// `active`: the seed is applied; its machine starts following the log.
    private func startFollowing(_ replica: BackupReplica, _ channel: Channel) {
        let (logger, metrics, corruptAtSync) = (logger, metrics, corruptAtSync)
        let follower = replica.startFollowing { prepared, manifest, state, position in
            ActiveFollower(
                prepared: prepared, manifest: manifest, seed: state, position: position, options: .init(corruptAtSync: corruptAtSync),
                logger: logger, metrics: metrics,
                send: { message in
                    metrics.stateSent(message)
                    channel.writeAndFlush(message, promise: nil)
                },
                onDiverged: { [weak self] reason in self?.refuse(channel, because: "the backup's machine diverged: \(reason)") })
        }
        guard let follower else { return }
        // The session may have ended, or been replaced, while the seed was applied: a follower
        // nobody will promote or abandon must not be left waiting for a log that never comes.
        let current = lock.withLock { session?.channel === channel && session?.ended == nil }
        guard current else { return follower.abandon() }
        follower.start()
    }

    /// Ends the session from this side; the primary seeds a new one.
    private func refuse(_ channel: Channel, because reason: String) {
        let ours = lock.withLock { () -> Bool in
            guard session?.channel === channel, session?.ended == nil else { return false }
            session?.ended = reason
            return true
        }
        guard ours else { return }
        logger.error("refusing the primary's session; it will seed again", metadata: ["reason": "\(reason)"])
        channel.close(after: .refusal(reason))
    }

    /// The applier queue: every message that arrived before the close has been applied.
    private func closed(_ channel: Channel) {
        let detected = ContinuousClock.now
        let plan = lock.withLock { () -> Promotion? in
            guard let current = session, current.channel === channel, !current.claimingHandover else { return nil }
            metrics.protected.record(0)
            let replica = current.replica
            if let ended = current.ended {
                logger.notice("the primary's connection ended; not taking over", metadata: ["reason": "\(ended)"])
                return endSession(replica)
            }
            guard let plan = promotionPlan(replica, detected: detected) else {
                logger.warning("the primary is gone before seeding this backup; nothing to take over")
                return endSession(replica)
            }
            return plan
        }
        guard let plan else { return }
        claim(plan, channel: channel)
    }

    /// Under `lock`: what a promotion of `replica` would serve, nil if it holds no machine yet.
    private func promotionPlan(_ replica: BackupReplica, detected: ContinuousClock.Instant) -> Promotion? {
        guard replica.canPromote, let prepared = replica.prepared, let manifest = replica.manifest, let protection = replica.protection,
            let state = replica.state, replica.mode != .active || replica.follower != nil
        else { return nil }
        return Promotion(
            mode: replica.mode, prepared: prepared, manifest: manifest, protection: protection, state: state, heldLog: replica.log,
            follower: replica.follower, epoch: replica.epoch, detected: detected)
    }

    /// Claims the next generation to take over with `plan`; `won` runs (on the applier queue)
    /// before the promotion when it is won.
    private func claim(_ plan: Promotion, channel: Channel, won: @escaping @Sendable (UInt64) -> Void = { _ in }) {
        let claiming = role.primaryGone(
            takeOver: { [self] generation in
                applier.async {
                    won(generation)
                    self.promote(plan, generation: generation)
                }
            },
            discard: { [self] _ in applier.async { self.discard(channel) } })
        guard claiming else {
            logger.warning("the primary is gone before this backup protected it (no marker reached); nothing to take over")
            return lock.withLock {
                if let current = session, current.channel === channel { _ = endSession(current.replica) }
            }
        }
    }

    /// Under `lock`: the session is over and nothing is taken over.
    private func endSession(_ replica: BackupReplica) -> Promotion? {
        role.sessionEnded()
        replica.follower?.abandon()
        session = nil
        return nil
    }

    /// The applier queue: the generation is won; the machine is this process's to serve.
    private func promote(_ plan: Promotion, generation: UInt64) {
        var plan = plan
        plan.generation = generation
        if let held = plan.heldLog {
            // Checked as it arrived, decoded only now: a record the primary checksummed but could not
            // have meant ends the replay where it is.
            let (entries, damage) = held.decodedEntries()
            if let damage {
                logger.error("the held log does not decode past entry \(held.start + UInt64(entries.count)): \(damage); replaying the \(entries.count) entries before it")
            }
            plan.log = entries
            plan.heldLog = nil
        }
        lock.withLock {
            promotion = plan
            session = nil
        }
        metrics.failovers.increment()
        logger.notice(
            plan.handoverStarted == nil ? "the primary is gone; taking over" : "the primary handed the machine over; taking over",
            metadata: [
                "mode": "\(plan.mode)", "generation": "\(generation)", "checkpoint": "\(plan.epoch)",
                "logEntriesToReplay": "\(plan.follower?.log.behind ?? plan.log.count)",
                "sinceDetectionMillis": "\((ContinuousClock.now - plan.detected).milliseconds)",
            ])
        promoted.signal()
    }

    /// The applier queue: the primary lives on (it won the generation): the copy is dropped.
    private func discard(_ channel: Channel) {
        lock.withLock {
            guard let current = session, current.channel === channel else { return }
            current.replica.follower?.abandon()
            session = nil
        }
        logger.notice("dropped the copy; waiting for a primary to seed this backup again")
    }
}

extension WireMessage {
    /// Messages that must be taken in the log's order: the log itself, and `active`'s sync points
    /// and repairs, which name positions in it.
    var isLogOrdered: Bool {
        switch self {
        case .logRecords, .syncPoint, .syncRepair: return true
        default: return false
        }
    }
}
