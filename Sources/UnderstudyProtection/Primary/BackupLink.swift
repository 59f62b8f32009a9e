import Foundation
import Logging
import NIOCore
import UnderstudyCheckpoint
import UnderstudyCore
import UnderstudyMachine
import UnderstudyReplication

/// The primary's connection to its backup: connects, and connects again after a loss (backing
/// off while the backup refuses); knows which connection awaits its seed, which one receives the
/// mode's stream (`active`), which one output waits for (`protecting`) and what the active one
/// has acknowledged; paces checkpoints by those not yet applied; and gives up a seeded backup
/// that acknowledges nothing for `ackTimeout`, as if it had fallen silent.
///
/// Its state is shared by the connecting task, the event loop (answers, loss), the machine's
/// thread (seeding, the stream, holding), the sender queue, the role's queue and the timers: all
/// of it is under `lock`, which is never held while calling out.
final class BackupLink: @unchecked Sendable {
    private let options: PrimaryReplicator.Options
    private let role: PrimaryRoleKeeper
    private let holding: OutputHoldingWorld
    private let moduleHash: String
    private let moduleBytes: Int
    /// The machine's memory limit, said in the hello: with the module's size it bounds every frame of
    /// the connection, both ways.
    private let memoryLimitBytes: UInt64
    private let moduleMessage: WireMessage
    private let suspension: SuspensionRequest
    private let group: EventLoopGroup
    private let logger: Logger
    private let metrics: ReplicationMetrics

    private let lock = NSLock()
    /// Welcomed and sent the module, waiting for the machine to seed it.
    private var awaitingSeed: Channel?
    /// Seeded: receives the mode's stream.
    private var active: Channel?
    private var stopped = false
    /// Refusals since the backup last accepted a seed: reconnecting backs off (up to 5 s), so a
    /// misconfigured backup costs a log line now and then, not a reconnect every interval.
    private var refusals = 0
    /// Checkpoints sent and not yet applied. A new one is only taken once the backup has applied
    /// the last: a backup slower than the guest's writes stretches the epoch (as Remus does)
    /// instead of queueing checkpoints without bound. Pages written meanwhile stay dirty in the
    /// tracker and go with the next one.
    private var unappliedCheckpoints = 0
    /// Since when the oldest of them has waited (nil when none does), for `ackTimeout`.
    private var unappliedSince: ContinuousClock.Instant?
    /// The active backup has applied its seed: from then on `ackTimeout` applies. (A seed of a
    /// large memory may legitimately take longer to apply than an acknowledgement.)
    private var seeded = false
    /// The watchdog has given the active backup up: one verdict per connection.
    private var givenUp = false
    /// Connections made so far: names each backup session to the role (`label`).
    private var connections = 0
    private var labels: [ObjectIdentifier: String] = [:]
    /// What the active backup has acknowledged last (a checkpoint's `epoch + 1` in remus, a log
    /// position otherwise): where the gate starts when output begins to wait for it.
    private var acknowledgedByActive: UInt64 = 0
    /// The connection output waits for; acknowledgements from any other are not the gate's.
    private var protecting: Channel?
    /// The marker the protecting backup was told, until its acknowledgements pass it: only then
    /// does it hold what was released alone before, so only then is the machine protected
    /// (a takeover before it would refuse, as `BackupReplica.reachedMarker` does).
    private var marker: (generation: UInt64, position: UInt64)?

    init(
        options: PrimaryReplicator.Options, role: PrimaryRoleKeeper, holding: OutputHoldingWorld, prepared: PreparedModule,
        manifest: RecordingManifest, suspension: SuspensionRequest, group: EventLoopGroup, logger: Logger, metrics: ReplicationMetrics
    ) {
        self.options = options
        self.role = role
        self.holding = holding
        moduleHash = prepared.hash
        moduleBytes = prepared.bytes.count
        // Prepared here, once: the backup checks these bytes against the hello's hash and runs
        // them as they are (no wasm-opt of its own, so a re-seed costs no preparation).
        memoryLimitBytes = manifest.configuration.memoryLimitBytes
        // Encoding cannot fail: nothing in it is a floating-point number.
        let replicated = try! JSONEncoder().encode(ReplicatedMachine(manifest: manifest, protection: options.protection))
        moduleMessage = .module(bytes: prepared.bytes, configuration: Array(replicated))
        self.suspension = suspension
        self.group = group
        self.logger = logger
        self.metrics = metrics
    }

    // MARK: Connecting

    /// The connecting task: keeps one backup connected while the role allows it; each connection
    /// hands the backup's answers to `stream` and this link (`AcknowledgementHandler`).
    func keepConnected(streaming stream: any BackupStream) async {
        var failures = 0
        while !Task.isCancelled {
            if role.mayConnectBackup, lock.withLock({ active == nil && awaitingSeed == nil && !stopped }) {
                var candidates = options.backup.map { [$0] } ?? []
                for standby in await options.standbys() where !candidates.contains(standby) { candidates.append(standby) }
                if candidates.isEmpty, failures == 0 {
                    logger.warning("no standby registered; serving unprotected until one is")
                    failures += 1
                }
                for candidate in candidates {
                    do {
                        try await connect(to: candidate, streaming: stream)
                        failures = 0
                        break
                    } catch {
                        if failures == 0 {
                            logger.warning(
                                "cannot reach the backup; serving unprotected and retrying",
                                metadata: ["backup": "\(candidate)", "reason": "\(error)"])
                        }
                        failures += 1
                    }
                }
            }
            let backoff = lock.withLock { refusals == 0 ? options.reconnectInterval : min(.seconds(5), options.reconnectInterval * (1 << min(refusals, 5))) }
            try? await Task.sleep(for: backoff)
        }
    }

    private func connect(to backup: ServiceAddress, streaming stream: any BackupStream) async throws {
        let hello = WireMessage.Hello(
            mode: options.mode, moduleHash: moduleHash, generation: role.fencing.generation, machine: options.machine,
            moduleBytes: UInt64(moduleBytes), memoryLimitBytes: memoryLimitBytes)
        let channel = try await ReplicationConnector.connect(
            to: backup, hello: hello, security: options.security, group: group, logger: logger, heartbeat: options.heartbeat,
            fencing: role.fencing)
        try await channel.pipeline.addHandler(AcknowledgementHandler(link: self, stream: stream)).get()
        channel.closeFuture.whenComplete { [weak self] _ in self?.lost(channel) }
        channel.writeAndFlush(moduleMessage, promise: nil)
        logger.notice("backup connected; seeding it", metadata: ["backup": "\(backup)", "mode": "\(options.mode)"])
        lock.withLock {
            connections += 1
            labels[ObjectIdentifier(channel)] = "\(backup) connection \(connections)"
            if channel.isActive { awaitingSeed = channel }
        }
        suspension.request()
    }

    /// No connection is made from now on; each open one is told the primary is shutting down and
    /// closed. Returns once they are.
    func stop() {
        let channels = lock.withLock { () -> [Channel] in
            stopped = true
            defer { (active, awaitingSeed) = (nil, nil) }
            return [active, awaitingSeed].compactMap { $0 }
        }
        for channel in channels {
            // Said so the backup does not take the exit of the guest for the death of its host.
            _ = try? channel.close(after: .refusal("the primary is shutting down")).wait()
        }
    }

    /// Ends a connection from this side, saying why: a backup told so does not take the close for
    /// this primary's death (this primary goes on serving, and will seed a backup again). The
    /// connection is lost to this side at once, so its claim of the next generation is on its way
    /// before the backup has read to the reason (a busy backup may take seconds).
    func refuse(_ channel: Channel, because reason: String) {
        logger.error("closing the replication connection", metadata: ["reason": "\(reason)"])
        lost(channel)
        channel.close(after: .refusal(reason))
    }

    /// The event loop: the backup refused this primary.
    func backupRefused(_ channel: Channel, reason: String) {
        lock.withLock { refusals += 1 }
        logger.error("the backup refused", metadata: ["reason": "\(reason)"])
        channel.close(promise: nil)
    }

    /// The connection is gone (closed by the peer, a bad frame, or silence: on the event loop) or
    /// refused by this side (any thread). Once per connection.
    private func lost(_ channel: Channel) {
        let (wasActive, wasSeeded, wasProtecting, label) = lock.withLock { () -> (Bool, Bool, Bool, String) in
            if awaitingSeed === channel { awaitingSeed = nil }
            let label = labels.removeValue(forKey: ObjectIdentifier(channel)) ?? "?"
            let wasProtecting = protecting === channel
            if wasProtecting { (protecting, marker) = (nil, nil) }
            guard active === channel else { return (false, false, wasProtecting, label) }
            active = nil
            unappliedCheckpoints = 0
            unappliedSince = nil
            defer { (seeded, givenUp) = (false, false) }
            return (true, seeded, wasProtecting, label)
        }
        guard wasActive else { return }
        metrics.protected.record(0)
        logger.warning(
            wasProtecting ? "backup lost; holding output until the next generation is won" : "backup lost before it protected anything",
            metadata: ["backup": "\(label)"])
        if wasSeeded { role.backupLost() }
    }

    // MARK: Seeding (the machine's thread)

    /// The connection awaiting its seed, and the seeded one receiving the stream.
    var channels: (awaitingSeed: Channel?, active: Channel?) { lock.withLock { (awaitingSeed, active) } }

    /// The seeded connection, receiving the stream; nil while there is none.
    var activeChannel: Channel? { lock.withLock { active } }

    func isActive(_ channel: Channel) -> Bool { lock.withLock { active === channel } }

    /// `channel` is not to be seeded now: it is refused, and a later connection is seeded instead.
    func abandonSeed(of channel: Channel) {
        lock.withLock { if awaitingSeed === channel { awaitingSeed = nil } }
    }

    /// `channel`'s seed is going out: it receives the stream from now on, and holds everything
    /// below `position` already. False if it no longer awaits its seed (it was lost meanwhile).
    func activate(_ channel: Channel, acknowledgedBelow position: UInt64) -> Bool {
        lock.withLock {
            guard awaitingSeed === channel else { return false }
            awaitingSeed = nil
            active = channel
            acknowledgedByActive = position
            return true
        }
    }

    /// The event loop: `channel`'s backup applied the seed's last checkpoint. From now on
    /// `ackTimeout` applies to it, and the role may record it as protecting.
    func seedApplied(on channel: Channel) {
        let label = lock.withLock { () -> String? in
            refusals = 0
            guard active === channel else { return nil }
            seeded = true
            return labels[ObjectIdentifier(channel)]
        }
        if let label {
            logger.notice("backup seeded; recording it as protecting", metadata: ["mode": "\(options.mode)"])
            role.backupSeeded(label)
        }
    }

    // MARK: Pacing

    /// A backup receives the stream and has applied every checkpoint or sync sent: the next may be taken.
    var awaitsNextCheckpoint: Bool { lock.withLock { active != nil && unappliedCheckpoints == 0 } }

    /// Every checkpoint or sync sent has been applied (or answered).
    var allCheckpointsApplied: Bool { lock.withLock { unappliedCheckpoints == 0 } }

    /// One checkpoint or sync more awaits the backup.
    func checkpointSent() {
        lock.withLock {
            if unappliedCheckpoints == 0 { unappliedSince = .now }
            unappliedCheckpoints += 1
        }
    }

    /// The backup on `channel` applied (or answered) the oldest one.
    func checkpointApplied(on channel: Channel) {
        lock.withLock {
            guard active === channel else { return }
            unappliedCheckpoints = max(0, unappliedCheckpoints - 1)
            unappliedSince = unappliedCheckpoints == 0 ? nil : .now
        }
    }

    /// The watchdog: a seeded backup that leaves output or a checkpoint waiting past
    /// `ackTimeout` is given up, as if it had fallen silent.
    func checkAcknowledgements() {
        guard let (channel, checkpointWaiting) = lock.withLock({ () -> (Channel, ContinuousClock.Instant?)? in
            guard seeded, !givenUp, let active else { return nil }
            return (active, unappliedSince)
        }) else { return }
        guard let waiting = [holding.oldestHeldSince, checkpointWaiting].compactMap({ $0 }).min() else { return }
        let waited = ContinuousClock.now - waiting
        guard waited > options.protection.ackTimeout else { return }
        lock.withLock { if active === channel { givenUp = true } }
        refuse(channel, because: "the backup acknowledged nothing for \(waited.milliseconds) ms (--ack-timeout \(options.protection.ackTimeout.milliseconds) ms)")
    }

    // MARK: Output

    /// The event loop: `channel`'s backup holds every position below `position`. Only the
    /// protecting connection's acknowledgements release output (a newer backup's count anew).
    func acknowledged(below position: UInt64, on channel: Channel) throws {
        let (gate, reached) = lock.withLock { () -> (Bool, (generation: UInt64, position: UInt64)?) in
            if active === channel { acknowledgedByActive = max(acknowledgedByActive, position) }
            guard protecting === channel else { return (false, nil) }
            return (true, passMarker(acknowledgedBelow: position))
        }
        if gate { try holding.acknowledge(below: position) }
        if let reached { announceProtected(reached) }
    }

    /// Under `lock`: the marker, forgotten, if acknowledgements below `position` pass it. remus
    /// acknowledges checkpoint `epoch` as `epoch + 1` and its marker names the epoch whose
    /// checkpoint must be applied; the log's acknowledgements and markers are both positions.
    private func passMarker(acknowledgedBelow position: UInt64) -> (generation: UInt64, position: UInt64)? {
        guard let marker, position >= marker.position + (options.mode == .remus ? 1 : 0) else { return nil }
        self.marker = nil
        return marker
    }

    private func announceProtected(_ marker: (generation: UInt64, position: UInt64)) {
        metrics.protected.record(1)
        logger.notice(
            "the machine is protected", metadata: ["mode": "\(options.mode)", "generation": "\(marker.generation)", "from": "\(marker.position)"])
    }

    /// The machine's thread, starting to hold: output waits for the active connection from now on
    /// if it is `backup`'s. Returns it, with what it has acknowledged; nil if it is not.
    func startProtecting(by backup: String?) -> (channel: Channel, acknowledged: UInt64)? {
        lock.withLock {
            guard let backup, let active, labels[ObjectIdentifier(active)] == backup else { return nil }
            protecting = active
            return (active, acknowledgedByActive)
        }
    }

    /// The machine's thread: `channel` was told it protects the machine from `position` on.
    /// What it has acknowledged may already pass it.
    func markerSent(generation: UInt64, position: UInt64, on channel: Channel) {
        let reached = lock.withLock { () -> (generation: UInt64, position: UInt64)? in
            guard protecting === channel else { return nil }
            marker = (generation, position)
            return passMarker(acknowledgedBelow: acknowledgedByActive)
        }
        if let reached { announceProtected(reached) }
    }

    /// The connection of a backup that protects the machine (its acknowledgements passed the
    /// marker: it could take over), if there is one.
    /// The backup won the generation of a planned handover (set once, before connecting).
    var takingOver: (@Sendable (UInt64) -> Void)?

    var protectingChannel: Channel? { lock.withLock { marker == nil ? protecting : nil } }

    /// The role's queue: output waits for no connection.
    func stopProtecting() { lock.withLock { (protecting, marker) = (nil, nil) } }
}
