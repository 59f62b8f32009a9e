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
/// Fencing (DESIGN.md): two hosts alone cannot tell a dead primary from a cut link. On one host
/// the service address settles it — a promoted backup cannot listen while the primary still does.
public final class BackupService: @unchecked Sendable {
    /// What a promotion starts from.
    public struct Promotion {
        public var mode: ReplicationMode
        public var prepared: PreparedModule
        public var manifest: RecordingManifest
        public var state: MachineState
        /// `llm`: the log after the state, to replay before going live.
        public var log: [EventLogEntry]
        public var epoch: UInt64
        /// When the primary's death was noticed.
        public var detected: ContinuousClock.Instant
    }

    private struct Session {
        let channel: Channel
        let replica: BackupReplica
        /// This end refused a message, or the primary said goodbye: not a death.
        var ended: String?
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

    public init(logger: Logger, listenerCount: Int) {
        self.logger = logger
        self.listenerCount = listenerCount
        metrics.protected.record(0)
    }

    public func listen(on address: ServiceAddress, heartbeat: HeartbeatTiming, group: EventLoopGroup) async throws -> SocketAddress {
        let listener = try await ReplicationListener.bind(
            address, group: group, logger: logger, heartbeat: heartbeat,
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
            if let session, session.channel.isActive, session.channel !== channel { return "this backup already protects a primary" }
            // A primary connecting again lived on unprotected: whatever an earlier connection left
            // here is stale, and is dropped.
            session = Session(channel: channel, replica: BackupReplica(hello: hello, listenerCount: listenerCount))
            return nil
        }
    }

    /// The event loop. Log records are the latency path of `llm` (held output waits for their
    /// acknowledgement), so once the log exists and nothing of it waits on the applier queue they
    /// are checked and acknowledged right here; everything else, in order, on the applier queue.
    private func route(_ message: WireMessage, from channel: Channel) {
        let direct = lock.withLock { () -> Bool in
            guard case .logRecords = message else { return false }
            guard pendingLogBatches == 0, let session, session.channel === channel, session.replica.holdsLog else {
                pendingLogBatches += 1
                return false
            }
            return true
        }
        if direct { return handle(message, from: channel) }
        applier.async { [self] in
            handle(message, from: channel)
            if case .logRecords = message { lock.withLock { pendingLogBatches -= 1 } }
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
        do {
            let reply = try current.replica.handle(message)
            switch reply {
            case .checkpointApplied(let epoch):
                metrics.checkpointsApplied.increment()
                if epoch == 1 {
                    logger.notice("seeded; protecting the primary", metadata: ["mode": "\(current.replica.mode)"])
                    metrics.protected.record(1)
                }
            case .logHeld: metrics.logHeld.record(current.replica.heldEntryCount)
            default: break
            }
            if let reply { channel.writeAndFlush(reply, promise: nil) }
        } catch {
            logger.error("refusing the primary's message; closing", metadata: ["reason": "\(error)"])
            lock.withLock { session?.ended = "refused: \(error)" }
            channel.writeAndFlush(WireMessage.refusal("\(error)")).whenComplete { _ in channel.close(promise: nil) }
        }
    }

    /// The applier queue: every message that arrived before the close has been applied.
    private func closed(_ channel: Channel) {
        let detected = ContinuousClock.now
        let plan = lock.withLock { () -> Promotion? in
            guard let current = session, current.channel === channel else { return nil }
            metrics.protected.record(0)
            if let ended = current.ended {
                logger.notice("the primary's connection ended; not taking over", metadata: ["reason": "\(ended)"])
                session = nil
                return nil
            }
            let replica = current.replica
            guard replica.canPromote, let prepared = replica.prepared, let manifest = replica.manifest, let state = replica.state else {
                logger.warning("the primary is gone before seeding this backup; nothing to take over")
                session = nil
                return nil
            }
            promotion = Promotion(
                mode: replica.mode, prepared: prepared, manifest: manifest, state: state, log: replica.log?.entries ?? [],
                epoch: replica.epoch, detected: detected)
            return promotion
        }
        guard let plan else { return }
        metrics.failovers.increment()
        logger.notice(
            "the primary is gone; taking over",
            metadata: ["mode": "\(plan.mode)", "checkpoint": "\(plan.epoch)", "logEntriesToReplay": "\(plan.log.count)"])
        promoted.signal()
    }
}
