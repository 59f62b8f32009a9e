import Dispatch
import Foundation
import Logging
import Metrics
import NIOCore
import UnderstudyCheckpoint
import UnderstudyCore
import UnderstudyEventLog
import UnderstudyMachine
import UnderstudyReplication

/// The primary's half of a protected machine (DESIGN.md, "Modes"): builds the world the guest runs
/// on — the live world behind an `OutputHoldingWorld`, and in `llm` a `RecordingWorld` whose log
/// streams to the backup — keeps a connection to the backup, seeds it with a full checkpoint
/// when it connects, then sends what the mode sends (`remus`: a checkpoint every epoch; `llm`:
/// the log as the guest consumes the world, and a checkpoint every interval) and releases
/// output as the backup acknowledges it. When output waits and when it may leave alone is the
/// role's decision (`PrimaryRoleKeeper`): seeding a backup holds nothing; once the store records
/// the seeded backup as protecting, output waits for it; losing it holds everything until the
/// next generation is won alone (or the role is lost, and the process stands down). It
/// reconnects and seeds a backup again by itself.
///
/// Threads: the machine's (the world, checkpoints, the log), the connection's event loop
/// (acknowledgements, loss), and a sender queue that encodes checkpoints off the pause.
public final class PrimaryReplicator: @unchecked Sendable {
    public struct Options: Sendable {
        public var mode: ReplicationMode
        public var backup: ServiceAddress
        /// `remus`: how often a checkpoint is taken (and output released).
        public var epoch: Duration
        /// `llm`: how often a checkpoint is taken, bounding what a promotion replays. LLM's
        /// paper checkpoints rarely; replaying runs the guest about as fast as it ran, so this
        /// is roughly the worst-case replay time of a takeover (goal: ≤ 100 ms failover), and a
        /// delta checkpoint costs a fraction of a millisecond of pause.
        public var checkpointInterval: Duration
        /// `llm`: a checkpoint is also taken once this much log has been sent since the last.
        public var logBytesPerCheckpoint: Int
        /// `active`: how often both machines stop at one log position and compare.
        public var syncInterval: Duration = .milliseconds(100)
        /// `active`: what a sync that finds differences compares and repairs in (FGBI).
        public var blockSize = SyncBlockSize.standard
        /// `active`: every sync also compares the whole state (tests, diagnosis).
        public var verifySyncs = false
        public var heartbeat: HeartbeatTiming
        /// How the connection to the backup is authenticated.
        public var security: ReplicationSecurity
        /// A seeded backup that has left an output or a checkpoint unacknowledged this long
        /// counts as lost, though it heartbeats (a stuck process, a full disk, a stopped child):
        /// otherwise every reply would wait for it forever.
        public var ackTimeout: Duration = .milliseconds(500)
        /// The machine's name, said in the hello (a backup for another machine refuses it).
        public var machine = ""
        public var reconnectInterval: Duration

        public init(
            mode: ReplicationMode, backup: ServiceAddress, security: ReplicationSecurity, epoch: Duration = .milliseconds(25),
            checkpointInterval: Duration = .milliseconds(50), logBytesPerCheckpoint: Int = 8 << 20,
            heartbeat: HeartbeatTiming = .standard, reconnectInterval: Duration = .milliseconds(200)
        ) {
            precondition(mode != .none, "a primary protects in remus, llm or active mode")
            self.mode = mode
            self.backup = backup
            self.epoch = epoch
            self.checkpointInterval = checkpointInterval
            self.logBytesPerCheckpoint = logBytesPerCheckpoint
            self.heartbeat = heartbeat
            self.security = security
            self.reconnectInterval = reconnectInterval
        }
    }

    public let options: Options
    public let holding: OutputHoldingWorld
    private let role: PrimaryRoleKeeper
    private let recording: RecordingWorld?
    /// What the machine must be built on.
    public var world: MachineWorld { recording ?? holding }

    private let prepared: PreparedModule
    private let moduleMessage: WireMessage
    private let suspension: SuspensionRequest
    private let group: EventLoopGroup
    private let logger: Logger
    private let capture: CheckpointCapture
    private let sender = DispatchQueue(label: "understudy.checkpoint-sender")
    /// The state the backup holds: checkpoints travel as blocks that differ from it, repairs are
    /// taken from it. Used on `sender` only.
    private let backupCopy: BackupCopy
    private let metrics: ReplicationMetrics
    /// The log position the stream has reached (llm), for the lag metric; guarded by `lock`.
    private var logSent: UInt64 = 0
    private var timer: DispatchSourceTimer?
    private var ackWatchdog: DispatchSourceTimer?
    private var connecting: Task<Void, Never>?

    /// Shared between the machine's thread and the event loop.
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
    /// The role's request to start holding, carried out at the next suspension.
    private var pendingHold: (generation: UInt64, backup: String?)?

    // The machine's thread only.
    /// Checkpoints sent on the active connection; in `remus` output waits for `epoch + 1`.
    private var epoch: UInt64 = 0
    private var logBytesSinceCheckpoint = 0
    private var seedStarted: ContinuousClock.Instant?
    /// Where a pre-copy seed stands (guarded by `lock`: the sender finishes the copy).
    private var precopy = Precopy.none
    private enum Precopy: Equatable {
        case none
        case copying(ObjectIdentifier)
        case copied(ObjectIdentifier)
    }

    public init(
        options: Options, role: PrimaryRoleKeeper, prepared: PreparedModule, configuration: [UInt8], live: LiveWorld,
        suspension: SuspensionRequest, group: EventLoopGroup, logger: Logger
    ) {
        self.options = options
        self.role = role
        metrics = ReplicationMetrics(role: "primary", mode: "\(options.mode)")
        self.prepared = prepared
        // Prepared here, once: the backup checks these bytes against the hello's hash and runs
        // them as they are (no wasm-opt of its own, so a re-seed costs no preparation).
        moduleMessage = .module(bytes: prepared.bytes, configuration: configuration)
        self.suspension = suspension
        self.group = group
        self.logger = logger
        capture = CheckpointCapture(moduleHash: prepared.hash)
        holding = OutputHoldingWorld(holding: live)
        live.outputWakeDescriptor = holding.wakeDescriptor
        backupCopy = BackupCopy(blockSize: options.blockSize)
        if options.mode == .llm || options.mode == .active {
            let stream = LogStream()
            let recording = RecordingWorld(recording: holding, to: stream, batchBytes: 256 << 10)
            self.recording = recording
            stream.replicator = self
            // An output waits for its own entry; it is the next one the recording logs.
            holding.positionOfNextOutput = { [unowned recording] in recording.position }
            // Before the guest waits, the log so far goes to the backup: held output is released
            // by its acknowledgement.
            holding.beforeWaiting = { [unowned recording] in try? recording.flush() }
        } else {
            recording = nil
            holding.positionOfNextOutput = { [unowned self] in epoch + 1 }
        }
        metrics.protected.record(0)
    }

    /// Takes the mode's checkpoints at the machine's suspensions, and starts connecting.
    public func start(_ machine: Machine) {
        machine.onSuspended = { [unowned self] machine in try self.suspended(machine) }
        role.start(
            effects: .init(
                startHolding: { [weak self] generation, backup in self?.requestHolding(generation: generation, for: backup) },
                releaseEverything: { [weak self] in self?.releaseEverything() },
                standDown: { [weak self] reason in self?.standDown(reason) }))
        let interval = [.remus: options.epoch, .active: options.syncInterval][options.mode] ?? options.checkpointInterval
        let timer = DispatchSource.makeTimerSource(queue: .global())
        let nanos = Int(interval.nanoseconds)
        timer.schedule(deadline: .now() + .nanoseconds(nanos), repeating: .nanoseconds(nanos), leeway: .microseconds(200))
        timer.setEventHandler { [weak self] in
            guard let self, self.lock.withLock({ self.active != nil && self.unappliedCheckpoints == 0 }) else { return }
            self.suspension.request()
        }
        timer.resume()
        self.timer = timer
        let watchdog = DispatchSource.makeTimerSource(queue: .global())
        let period = max(Int(options.ackTimeout.nanoseconds) / 4, 1_000_000)
        watchdog.schedule(deadline: .now() + .nanoseconds(period), repeating: .nanoseconds(period), leeway: .milliseconds(1))
        watchdog.setEventHandler { [weak self] in self?.checkAcknowledgements() }
        watchdog.resume()
        ackWatchdog = watchdog
        connecting = Task.detached { [weak self] in await self?.keepConnected() }
    }

    public func stop() {
        timer?.cancel()
        ackWatchdog?.cancel()
        connecting?.cancel()
        sender.sync {}  // a pre-copy reads guest memory: done before the machine goes away
        let channels = lock.withLock { () -> [Channel] in
            stopped = true
            defer { (active, awaitingSeed) = (nil, nil) }
            return [active, awaitingSeed].compactMap { $0 }
        }
        for channel in channels {
            // Said so the backup does not take the exit of the guest for the death of its host;
            // it goes out behind whatever is still queued, so the close waits for it (2 s at most).
            let goodbye = channel.writeAndFlush(WireMessage.refusal("the primary is shutting down"))
            let deadline = channel.eventLoop.scheduleTask(in: .seconds(2)) { channel.close(promise: nil) }
            goodbye.whenComplete { _ in
                deadline.cancel()
                channel.close(promise: nil)
            }
            _ = try? channel.closeFuture.wait()
        }
    }

    // MARK: The connection

    private func keepConnected() async {
        var failures = 0
        while !Task.isCancelled {
            if role.mayConnectBackup, lock.withLock({ active == nil && awaitingSeed == nil && !stopped }) {
                do {
                    let channel = try await ReplicationConnector.connect(
                        to: options.backup, hello: .init(mode: options.mode, moduleHash: prepared.hash, generation: role.fencing.generation, machine: options.machine),
                        security: options.security, group: group, logger: logger, heartbeat: options.heartbeat, fencing: role.fencing)
                    try await channel.pipeline.addHandler(AcknowledgementHandler(replicator: self)).get()
                    channel.closeFuture.whenComplete { [weak self] _ in self?.lost(channel) }
                    channel.writeAndFlush(moduleMessage, promise: nil)
                    failures = 0
                    logger.notice("backup connected; seeding it", metadata: ["backup": "\(options.backup)", "mode": "\(options.mode)"])
                    lock.withLock {
                        connections += 1
                        labels[ObjectIdentifier(channel)] = "\(options.backup) connection \(connections)"
                        if channel.isActive { awaitingSeed = channel }
                    }
                    suspension.request()
                } catch {
                    if failures == 0 {
                        logger.warning(
                            "cannot reach the backup; serving unprotected and retrying",
                            metadata: ["backup": "\(options.backup)", "reason": "\(error)"])
                    }
                    failures += 1
                }
            }
            let backoff = lock.withLock { refusals == 0 ? options.reconnectInterval : min(.seconds(5), options.reconnectInterval * (1 << min(refusals, 5))) }
            try? await Task.sleep(for: backoff)
        }
    }

    /// The event loop: the backup acknowledged something.
    fileprivate func received(_ message: WireMessage, on channel: Channel) {
        do {
            switch message {
            case .logHeld(let position):
                guard recording != nil else { throw ProtocolViolation("log held in \(options.mode) mode") }
                try acknowledged(below: position, on: channel)
                let sent = lock.withLock { logSent }
                metrics.logLag.record(sent > position ? Int64(sent - position) : 0)
            case .checkpointApplied(let applied):
                // The seed's two (0 and 1) are not counted: only the mode's stream is paced.
                if applied >= 2 { lock.withLock { checkpointApplied(on: channel) } }
                if options.mode == .remus { try acknowledged(below: applied + 1, on: channel) }
                if applied == 1 {
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
            case .syncMatched(let sync):
                try answered(sync: sync, on: channel) { repairer in try repairer.matched(sync: sync) }
            case .syncDiffers(let sync, let blockSize, let stateDigest, let hashes):
                try answered(sync: sync, on: channel) { [options, metrics, logger] repairer in
                    guard Int(blockSize) == options.blockSize else { throw ProtocolViolation("sync hashes in \(blockSize)-byte blocks, not \(options.blockSize)") }
                    let pages = try PageBlockHashes.decode(hashes, blockSize: Int(blockSize))
                    let repair = try repairer.repair(sync: sync, backupPages: pages, backupStateDigest: stateDigest)
                    let message = WireMessage.syncRepair(sync: sync, repair: PackedBytes(packing: repair.encoded()))
                    let bytes = metrics.stateSent(message)
                    metrics.repairBytes.increment(by: bytes)
                    metrics.divergences.increment()
                    metrics.repairedBlocks.increment(by: Int64(repair.blocks.count))
                    channel.writeAndFlush(message, promise: nil)
                    logger.warning(
                        "sync found the backup diverged; sending the blocks that differ",
                        metadata: [
                            "sync": "\(sync)", "blocks": "\(repair.blocks.count)", "blockSize": "\(blockSize)",
                            "globalsOrDevices": "\(repair.state.isEmpty ? "agreed" : "differed")", "bytes": "\(bytes)",
                        ])
                }
            case .refusal(let reason):
                lock.withLock { refusals += 1 }
                logger.error("the backup refused", metadata: ["reason": "\(reason)"])
                channel.close(promise: nil)
            default:
                throw ProtocolViolation("unexpected \(message.kind) from the backup")
            }
        } catch {
            refuse(channel, because: "\(error)")
        }
    }

    /// Ends a connection from this side, saying why: a backup told so does not take the close for
    /// this primary's death (this primary goes on serving, and will seed a backup again).
    private func refuse(_ channel: Channel, because reason: String) {
        logger.error("closing the replication connection", metadata: ["reason": "\(reason)"])
        channel.writeAndFlush(WireMessage.refusal(reason)).whenComplete { _ in channel.close(promise: nil) }
    }

    /// The event loop: the backup answered sync `sync`; `handle` runs on the sender queue, where
    /// the repairer lives, and the next sync may be taken once it has.
    private func answered(sync: UInt64, on channel: Channel, _ handle: @escaping @Sendable (BackupCopy) throws -> Void) throws {
        guard options.mode == .active else { throw ProtocolViolation("a sync answer in \(options.mode) mode") }
        sender.async { [weak self] in
            guard let self, self.lock.withLock({ self.active === channel }) else { return }
            do {
                try handle(self.backupCopy)
            } catch {
                // No next sync on this connection: it is refused, and a new seed starts over.
                return self.refuse(channel, because: "\(error)")
            }
            // Only while still this connection's: a stale answer must not pace another's syncs.
            self.lock.withLock { self.checkpointApplied(on: channel) }
        }
    }

    /// The event loop: the connection is gone (closed by the peer, a bad frame, or silence).
    fileprivate func lost(_ channel: Channel) {
        let (wasActive, wasSeeded, wasProtecting) = lock.withLock { () -> (Bool, Bool, Bool) in
            if awaitingSeed === channel { awaitingSeed = nil }
            labels[ObjectIdentifier(channel)] = nil
            let wasProtecting = protecting === channel
            if wasProtecting { protecting = nil }
            guard active === channel else { return (false, false, wasProtecting) }
            active = nil
            unappliedCheckpoints = 0
            unappliedSince = nil
            defer { (seeded, givenUp) = (false, false) }
            return (true, seeded, wasProtecting)
        }
        guard wasActive else { return }
        metrics.protected.record(0)
        logger.warning(
            wasProtecting ? "backup lost; holding output until the next generation is won" : "backup lost before it protected anything",
            metadata: ["backup": "\(options.backup)"])
        if wasSeeded { role.backupLost() }
    }

    /// The event loop: `channel`'s backup holds every position below `position`. Only the
    /// protecting connection's acknowledgements release output (a newer backup's count anew).
    private func acknowledged(below position: UInt64, on channel: Channel) throws {
        let gate = lock.withLock { () -> Bool in
            if active === channel { acknowledgedByActive = max(acknowledgedByActive, position) }
            return protecting === channel
        }
        if gate { try holding.acknowledge(below: position) }
    }

    // MARK: The role's effects

    /// The role's queue: output is to wait for `backup` (nil: for nobody, until the next
    /// generation is won) from the next suspension on.
    private func requestHolding(generation: UInt64, for backup: String?) {
        lock.withLock { pendingHold = (generation, backup) }
        suspension.request()
    }

    /// The machine's thread, at a suspension: output waits from here on; the backup is told
    /// where from, with the generation it now protects.
    private func startHolding(generation: UInt64, for backup: String?) {
        let target = lock.withLock { () -> (Channel, UInt64)? in
            guard let backup, let active, labels[ObjectIdentifier(active)] == backup else { return nil }
            protecting = active
            return (active, acknowledgedByActive)
        }
        holding.protect(acknowledgedBelow: target?.1 ?? 0)
        guard let (channel, _) = target else {
            logger.notice("holding output: its backup is gone", metadata: ["generation": "\(generation)"])
            return
        }
        let position = holding.positionOfNextOutput()
        channel.writeAndFlush(WireMessage.protecting(generation: generation, position: position), promise: nil)
        metrics.protected.record(1)
        logger.notice("the machine is protected", metadata: ["mode": "\(options.mode)", "generation": "\(generation)", "from": "\(position)"])
    }

    /// The role's queue: the primary holds the machine alone.
    private func releaseEverything() {
        holding.unprotect()
        lock.withLock { protecting = nil }
    }

    /// The role's queue: another process holds the role, or the store could not be reached in
    /// time. Nothing held may leave; the process exits without a goodbye, so a protecting backup
    /// takes the exit for a death and its claim decides.
    private func standDown(_ reason: String) {
        holding.dropEverything()
        FileHandle.standardError.write(Data("understudy: standing down: \(reason)\n".utf8))
        exit(StandDown.exitCode)
    }

    /// Under `lock`: one checkpoint or sync more awaits the backup.
    private func checkpointSent() {
        if unappliedCheckpoints == 0 { unappliedSince = .now }
        unappliedCheckpoints += 1
    }

    /// Under `lock`: the backup on `channel` applied (or answered) the oldest one.
    private func checkpointApplied(on channel: Channel) {
        guard active === channel else { return }
        unappliedCheckpoints = max(0, unappliedCheckpoints - 1)
        unappliedSince = unappliedCheckpoints == 0 ? nil : .now
    }

    /// The watchdog: a seeded backup that leaves output or a checkpoint waiting past
    /// `ackTimeout` is given up, as if it had fallen silent.
    private func checkAcknowledgements() {
        guard let (channel, checkpointWaiting) = lock.withLock({ () -> (Channel, ContinuousClock.Instant?)? in
            guard seeded, !givenUp, let active else { return nil }
            return (active, unappliedSince)
        }) else { return }
        guard let waiting = [holding.oldestHeldSince, checkpointWaiting].compactMap({ $0 }).min() else { return }
        let waited = ContinuousClock.now - waiting
        guard waited > options.ackTimeout else { return }
        lock.withLock { if active === channel { givenUp = true } }
        refuse(channel, because: "the backup acknowledged nothing for \(waited.milliseconds) ms (--ack-timeout \(options.ackTimeout.milliseconds) ms)")
    }

    // MARK: The machine's thread

    /// Called by the log stream with each batch (llm).
    fileprivate func send(logRecords bytes: [UInt8], first: UInt64) {
        let end = recording?.position ?? first
        guard let channel = lock.withLock({ () -> Channel? in
            logSent = end
            return active
        }) else { return }
        metrics.bytesSent.increment(by: Int64(bytes.count))
        channel.writeAndFlush(WireMessage.logRecords(first: first, bytes: bytes), promise: nil)
        logBytesSinceCheckpoint += bytes.count
        if options.mode == .llm && logBytesSinceCheckpoint > options.logBytesPerCheckpoint && lock.withLock({ unappliedCheckpoints == 0 }) {
            logBytesSinceCheckpoint = 0
            suspension.request()
        }
    }

    private func suspended(_ machine: Machine) throws {
        if let hold = lock.withLock({ () -> (generation: UInt64, backup: String?)? in
            defer { pendingHold = nil }
            return pendingHold
        }) {
            try recording?.flush()
            return startHolding(generation: hold.generation, for: hold.backup)
        }
        let (seeding, channel, precopy) = lock.withLock { (awaitingSeed, active, self.precopy) }
        if let seeding {
            switch precopy {
            case .copying(ObjectIdentifier(seeding)): break  // the sender asks again once the copy is out
            case .copied(ObjectIdentifier(seeding)): try finishSeed(seeding, machine)
            default: try beginSeed(seeding, machine)  // nothing begun, or for a connection since lost
            }
        } else if let channel {
            if options.mode == .active { try sync(machine, with: channel) } else { try checkpoint(machine, to: channel) }
        }
    }

    /// Seeding a new backup by pre-copy: checkpoint 0 is the whole memory, copied and sent while
    /// the guest runs on; checkpoint 1, at the next suspension, is the pages written meanwhile,
    /// and makes the backup exact. Without kernel dirty tracking there is no sound way to copy a
    /// running guest, and checkpoint 1 is taken whole, stopped.
    private func beginSeed(_ channel: Channel, _ machine: Machine) throws {
        try recording?.flush()  // what precedes the seed is in it, and goes nowhere
        capture.startOver()
        seedStarted = ContinuousClock.now
        guard let (memory, rest) = try capture.beginPrecopy(machine) else {
            return try finishSeed(channel, machine)
        }
        let copying = Precopy.copying(ObjectIdentifier(channel))
        lock.withLock { precopy = copying }
        let (logger, metrics, suspension, moduleHash) = (logger, metrics, suspension, prepared.hash)
        let memoryBox = UnsafeSendable(memory)
        logger.notice("seeding the backup: copying memory while the guest runs", metadata: ["bytes": "\(memory.count)"])
        sender.async { [weak self] in
            let memory = memoryBox.value
            let began = ContinuousClock.now
            var copy = [UInt8]()
            copy.reserveCapacity(memory.count)
            let chunk = 4 << 20
            var reported = 0
            for start in stride(from: 0, to: memory.count, by: chunk) {
                copy.append(contentsOf: UnsafeRawBufferPointer(rebasing: memory[start..<min(start + chunk, memory.count)]))
                let percent = copy.count * 100 / max(memory.count, 1)
                if memory.count >= 64 << 20 && percent >= reported + 25 {
                    reported = percent
                    logger.notice("seeding the backup", metadata: ["copied": "\(copy.count >> 20) of \(memory.count >> 20) MiB"])
                }
            }
            var state = rest
            state.memory = copy
            let bytes = CheckpointCodec.encode(Checkpoint.full(of: state, moduleHash: moduleHash, logPosition: 0))
            let message = WireMessage.packing(epoch: 0, checkpoint: bytes)
            self?.backupCopy.startOver(from: state)
            let sent = metrics.stateSent(message)
            channel.writeAndFlush(message, promise: nil)
            logger.notice(
                "seeding the backup: memory copied and sent; the pages written meanwhile follow",
                metadata: [
                    "bytes": "\(bytes.count)", "sent": "\(sent)",
                    "millis": "\((ContinuousClock.now - began).milliseconds)",
                ])
            if let self {
                // Only if no newer seed has begun since (this one's connection may be gone).
                lock.withLock { if precopy == copying { precopy = .copied(ObjectIdentifier(channel)) } }
            }
            suspension.request()
        }
    }

    /// Checkpoint 1 of a new backup, delta after a pre-copy or whole; from its log position on,
    /// the mode's stream flows (output waits for the backup only once the role says so).
    private func finishSeed(_ channel: Channel, _ machine: Machine) throws {
        lock.withLock { precopy = .none }
        try recording?.flush()
        let position = recording?.position ?? 0
        let captured = try capture.capture(machine, logPosition: position)
        let bytes = CheckpointCodec.encode(captured.checkpoint!)
        let pages = captured.pageCount
        // The backup's copy is complete with this; the sender queue keeps it from now on.
        sender.async { [weak self, backupCopy] in
            defer { captured.recycle() }
            do {
                if captured.checkpoint!.kind == .full { backupCopy.startOver() }
                try backupCopy.advance(by: captured.checkpoint!)
            } catch {
                // Every later patch would be XORed against the wrong copy: seed again instead.
                self?.refuse(channel, because: "the seed does not apply to the primary's copy of the backup: \(error)")
            }
        }
        // Epochs restart with each backup: output held for another's (the primary settling its
        // generation) would be released by the wrong numbers. It seeds again once alone.
        guard !holding.isProtected else {
            lock.withLock { if awaitingSeed === channel { awaitingSeed = nil } }
            return refuse(channel, because: "the primary is settling its generation; it will seed this backup again")
        }
        epoch = 1
        logBytesSinceCheckpoint = 0
        let stillWanted = lock.withLock { () -> Bool in
            guard awaitingSeed === channel else { return false }
            awaitingSeed = nil
            active = channel
            acknowledgedByActive = options.mode == .remus ? 1 : position
            return true
        }
        guard stillWanted else { return }
        let seed = WireMessage.checkpoint(epoch: 1, bytes: bytes)
        metrics.stateSent(seed)
        metrics.epochs.increment()
        logger.notice(
            "seed sent",
            metadata: [
                "pages": "\(pages)", "bytes": "\(bytes.count)", "logPosition": "\(position)",
                "sinceSeedStartMillis": "\(seedStarted.map { (ContinuousClock.now - $0).milliseconds } ?? 0)",
            ])
        channel.writeAndFlush(seed, promise: nil)
    }

    private func checkpoint(_ machine: Machine, to channel: Channel) throws {
        try recording?.flush()
        let began = ContinuousClock.now
        let captured = try capture.capture(machine, logPosition: recording?.position ?? 0)
        epoch += 1
        logBytesSinceCheckpoint = 0
        let sent = epoch
        lock.withLock { checkpointSent() }
        metrics.capture.recordNanoseconds((ContinuousClock.now - began).nanoseconds)
        metrics.pages.record(captured.pageCount)
        metrics.epochs.increment()
        let (metrics, backupCopy) = (metrics, backupCopy)
        sender.async { [weak self] in
            defer { captured.recycle() }
            let message: WireMessage
            do {
                message = .blockCheckpoint(epoch: sent, patch: PackedBytes(packing: try backupCopy.patch(for: captured).encoded()))
            } catch {
                self?.refuse(channel, because: "\(error)")  // not reachable: a seed always comes first
                return
            }
            metrics.stateSent(message)
            channel.writeAndFlush(message, promise: nil)
        }
    }

    /// `active`: a sync point. Sent from here, before the guest resumes, so that it is on the wire
    /// ahead of every log entry after it (`FollowedLog` relies on that order). One at a time: a
    /// suspension while one is unanswered is not a sync, and the backup moves past it.
    private func sync(_ machine: Machine, with channel: Channel) throws {
        guard let recording, lock.withLock({ unappliedCheckpoints == 0 }) else { return }
        try recording.flush()
        let began = ContinuousClock.now
        let position = recording.position
        let captured = try capture.capture(machine, logPosition: position)
        let checkpoint = captured.checkpoint!
        let dirty = (checkpoint.pages.map(\.index) + checkpoint.zeroPages).sorted()
        let stateBytes = StateSync.stateBytes(of: checkpoint)
        let (digest, whole) = machine.withLinearMemory { memory in
            (
                StateSync.digest(memory: memory, dirty: dirty, stateBytes: stateBytes),
                options.verifySyncs ? StateSync.wholeState(memory: memory, stateBytes: stateBytes) : nil
            )
        }
        epoch += 1
        let sync = epoch
        lock.withLock { checkpointSent() }
        let message = WireMessage.syncPoint(
            SyncPoint(
                sync: sync, position: position, dirtyPages: UInt32(dirty.count), digest: digest,
                blockSize: UInt16(options.blockSize), wholeState: whole))
        metrics.stateSent(message)
        metrics.syncs.increment()
        metrics.pages.record(dirty.count)
        // Queued before the message goes out: the answer's handling queues behind it.
        sender.async { [weak self, backupCopy] in
            do {
                try backupCopy.pend(sync: sync, captured: captured, stateBytes: stateBytes)
            } catch {
                self?.refuse(channel, because: "\(error)")
            }
        }
        channel.writeAndFlush(message, promise: nil)
        metrics.capture.recordNanoseconds((ContinuousClock.now - began).nanoseconds)
    }
}

/// A value the sender queue may hold though the compiler cannot prove it safe (the pre-copy's
/// view of guest memory; see `CheckpointCapture.beginPrecopy`).
private struct UnsafeSendable<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}

struct ProtocolViolation: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// The `llm` recording's sink: each batch of log records goes to the backup.
private final class LogStream: EventLogSink {
    weak var replicator: PrimaryReplicator?
    func write(_ bytes: [UInt8], first: UInt64) throws { replicator?.send(logRecords: bytes, first: first) }
}

/// The top of the primary's pipeline, after the handshake.
private final class AcknowledgementHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = WireMessage
    private let replicator: PrimaryReplicator

    init(replicator: PrimaryReplicator) { self.replicator = replicator }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        replicator.received(unwrapInboundIn(data), on: context.channel)
    }
}
