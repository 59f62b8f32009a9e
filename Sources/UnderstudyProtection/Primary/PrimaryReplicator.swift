import Dispatch
import Foundation
import Logging
import NIOCore
import UnderstudyCheckpoint
import UnderstudyCore
import UnderstudyEventLog
import UnderstudyMachine
import UnderstudyReplication

/// The primary's half of a protected machine (DESIGN.md, "Modes"): builds the world the guest runs
/// on — the live world behind an `OutputHoldingWorld`, and in `llm` and `active` a
/// `RecordingWorld` whose log streams to the backup — and joins the parts that protect it:
///
/// - `BackupLink`: the connection to the backup (connecting again by itself after a loss),
///   which connection's acknowledgements release output, the pacing of checkpoints and the
///   watchdog that gives up a backup that acknowledges nothing;
/// - `BackupSeeder`: a full checkpoint, by pre-copy, for each backup that connects;
/// - the mode's `BackupStream`, once the backup is seeded: `RemusStream` (a checkpoint every
///   epoch), `LLMStream` (the log as the guest consumes the world, and a checkpoint every
///   interval) or `ActiveSyncStream` (the log, and sync points that compare and repair);
/// - `OutputRole`: the role's decisions (`PrimaryRoleKeeper`) on output. Seeding a backup holds
///   nothing; once the store records the seeded backup as protecting, output waits for it;
///   losing it holds everything until the next generation is won alone (or the role is lost,
///   and the process stands down).
///
/// Threads: the machine's (the world, the seed, the stream's checkpoints, syncs and log, the
/// start of holding), the connection's event loop (acknowledgements, loss), a sender queue that
/// encodes checkpoints off the pause and keeps the primary's copy of the backup, the role's
/// queue (`OutputRole`'s effects), and two timers: the mode's interval and the watchdog.
public final class PrimaryReplicator: @unchecked Sendable {
    public struct Options: Sendable {
        public var mode: ReplicationMode
        /// The standby to seed first (`--backup`), if one is named.
        public var backup: ServiceAddress?
        /// The standbys registered in etcd (`StandbyRegistry`), asked whenever there is none
        /// connected; tried after `backup`.
        public var standbys: @Sendable () async -> [ServiceAddress] = { [] }
        /// What it checkpoints, how long it waits for acknowledgements and for etcd; the backup
        /// is told, and protects the same way once promoted.
        public var protection = ProtectionSettings()
        public var heartbeat: HeartbeatTiming
        /// How the connection to the backup is authenticated.
        public var security: ReplicationSecurity
        /// The machine's name, said in the hello (a backup for another machine refuses it).
        public var machine = ""
        /// Runs just before a primary that lost its role exits: what it holds for the role (the
        /// service IP) goes first.
        public var beforeStandingDown: @Sendable () -> Void = {}
        /// Runs once this process has left the primary role (handed it over in a planned
        /// migration, or stood down having lost it), just before it exits: it may replace the
        /// process (`primary --replication` becomes a standby, so the pair forms again by itself).
        public var afterLeavingRole: @Sendable () -> Void = {}
        /// Where planned migrations are asked for (`understudy migrate`; etcd), if anywhere.
        public var migrations: MigrationBoard?
        public var reconnectInterval: Duration

        public init(
            mode: ReplicationMode, backup: ServiceAddress?, security: ReplicationSecurity, protection: ProtectionSettings = .init(),
            heartbeat: HeartbeatTiming = .standard, reconnectInterval: Duration = .milliseconds(200)
        ) {
            precondition(mode != .none, "a primary protects in remus, llm or active mode")
            precondition(protection.refusal == nil, "protection settings: \(protection.refusal ?? "")")
            self.mode = mode
            self.backup = backup
            self.protection = protection
            self.heartbeat = heartbeat
            self.security = security
            self.reconnectInterval = reconnectInterval
        }
    }

    public let options: Options
    public let holding: OutputHoldingWorld
    private let recording: RecordingWorld?
    /// What the machine must be built on.
    public var world: MachineWorld { recording ?? holding }

    private let role: PrimaryRoleKeeper
    private let suspension: SuspensionRequest
    private let link: BackupLink
    private let seeder: BackupSeeder
    private let stream: any BackupStream
    private let output: OutputRole
    /// Encodes checkpoints off the pause, and keeps the primary's copy of the backup (`BackupCopy`).
    private let sender = DispatchQueue(label: "understudy.checkpoint-sender")
    private var timer: DispatchSourceTimer?
    private var ackWatchdog: DispatchSourceTimer?
    private var connecting: Task<Void, Never>?
    private var watching: Task<Void, Never>?
    private let handover: PlannedHandover

    public init(
        options: Options, role: PrimaryRoleKeeper, prepared: PreparedModule, manifest: RecordingManifest, live: LiveWorld,
        suspension: SuspensionRequest, group: EventLoopGroup, logger: Logger, capture: CheckpointCapture? = nil
    ) {
        self.options = options
        self.role = role
        self.suspension = suspension
        let metrics = ReplicationMetrics(role: "primary", mode: "\(options.mode)")
        holding = OutputHoldingWorld(holding: live)
        live.outputWakeDescriptor = holding.wakeDescriptor
        let link = BackupLink(
            options: options, role: role, holding: holding, prepared: prepared, manifest: manifest, suspension: suspension,
            group: group, logger: logger, metrics: metrics)
        self.link = link
        // A promoted active backup's machine is tracked already: one tracker per memory.
        let capture = capture ?? CheckpointCapture(moduleHash: prepared.hash)
        let backupCopy = BackupCopy(blockSize: options.protection.blockSize)
        switch options.mode {
        case .remus:
            recording = nil
            let remus = RemusStream(
                checkpoints: CheckpointSender(
                    capture: capture, backupCopy: backupCopy, sender: sender, recording: nil, link: link, metrics: metrics),
                link: link)
            holding.positionOfNextOutput = { [unowned remus] in remus.positionOfNextOutput }
            stream = remus
        case .llm, .active:
            let log = LogStream(link: link, metrics: metrics)
            let recording = RecordingWorld(recording: holding, to: log, batchBytes: 256 << 10)
            log.recording = recording
            self.recording = recording
            // An output waits for its own entry; it is the next one the recording logs.
            holding.positionOfNextOutput = { [unowned recording] in recording.position }
            // Before the guest waits, the log so far goes to the backup: held output is released
            // by its acknowledgement.
            holding.beforeWaiting = { [unowned recording] in try? recording.flush() }
            if options.mode == .llm {
                let checkpoints = CheckpointSender(
                    capture: capture, backupCopy: backupCopy, sender: sender, recording: recording, link: link, metrics: metrics)
                stream = LLMStream(
                    checkpoints: checkpoints, log: log, link: link, suspension: suspension, logBytesPerCheckpoint: options.protection.logBytesPerCheckpoint)
            } else {
                stream = ActiveSyncStream(
                    log: log, recording: recording, capture: capture, backupCopy: backupCopy, sender: sender, link: link, metrics: metrics,
                    logger: logger, blockSize: options.protection.blockSize, verifySyncs: options.protection.verifySyncs)
            }
        case .none:
            preconditionFailure("a primary protects in remus, llm or active mode")
        }
        seeder = BackupSeeder(
            link: link, stream: stream, holding: holding, recording: recording, capture: capture, backupCopy: backupCopy, sender: sender,
            suspension: suspension, moduleHash: prepared.hash, metrics: metrics, logger: logger)
        handover = PlannedHandover(
            link: link, stream: stream, holding: holding, recording: recording, role: role, suspension: suspension,
            beforeLeaving: options.beforeStandingDown, afterLeaving: options.afterLeavingRole, logger: logger)
        link.takingOver = { [handover] generation in handover.takingOver(generation: generation) }
        output = OutputRole(
            holding: holding, link: link, recording: recording, suspension: suspension, mode: options.mode,
            beforeStandingDown: options.beforeStandingDown, afterStandingDown: options.afterLeavingRole, logger: logger)
        output.handoverFinishes = { [handover] reason in handover.roleLost(reason) }
        metrics.protected.record(0)
    }

    /// Takes the mode's checkpoints at the machine's suspensions, and starts connecting (unless
    /// `connecting` is false: a promoted primary replaying its log may seed no backup before
    /// it is live, as its recording starts there; it calls `startConnecting` then).
    public func start(_ machine: Machine, connecting: Bool = true) {
        machine.onSuspended = { [unowned self] machine in try self.suspended(machine) }
        role.start(effects: output.effects)
        let interval = [.remus: options.protection.epoch, .active: options.protection.syncInterval][options.mode] ?? options.protection.checkpointInterval
        let timer = DispatchSource.makeTimerSource(queue: .global())
        let nanos = Int(interval.nanoseconds)
        timer.schedule(deadline: .now() + .nanoseconds(nanos), repeating: .nanoseconds(nanos), leeway: .microseconds(200))
        timer.setEventHandler { [weak self] in
            guard let self, self.link.awaitsNextCheckpoint else { return }
            self.suspension.request()
        }
        timer.resume()
        self.timer = timer
        let watchdog = DispatchSource.makeTimerSource(queue: .global())
        let period = max(Int(options.protection.ackTimeout.nanoseconds) / 4, 1_000_000)
        watchdog.schedule(deadline: .now() + .nanoseconds(period), repeating: .nanoseconds(period), leeway: .milliseconds(1))
        watchdog.setEventHandler { [weak link] in link?.checkAcknowledgements() }
        watchdog.resume()
        ackWatchdog = watchdog
        if connecting { startConnecting() }
    }

    public func startConnecting() {
        precondition(connecting == nil, "connecting starts once")
        connecting = Task.detached { [link, stream] in await link.keepConnected(streaming: stream) }
        if let board = options.migrations { watching = Task.detached { [role, handover] in await Self.watch(board, role: role, handover: handover) } }
    }

    /// Asks the board every 100 ms for a migration of the generation this process holds.
    private static func watch(_ board: MigrationBoard, role: PrimaryRoleKeeper, handover: PlannedHandover) async {
        var handled: String?
        while !Task.isCancelled {
            if let request = try? await board.read(), request.state == .asked, request.id != handled,
                request.generation == role.fencing.generation
            {
                handled = request.id
                guard role.currentStanding == .protected else {
                    var refused = request
                    refused.state = .failed
                    refused.detail = "the primary of generation \(request.generation) has no backup protecting it to hand over to"
                    try? await board.post(refused)
                    continue
                }
                handover.request(request)
            }
            try? await Task.sleep(for: .milliseconds(100))
        }
    }

    public func stop() {
        timer?.cancel()
        ackWatchdog?.cancel()
        connecting?.cancel()
        watching?.cancel()
        // A pre-copy reads guest memory, a part at a time as the last is written: stopped, and the
        // part being read finished, before the machine goes away.
        seeder.stop()
        sender.sync {}
        link.stop()
    }

    /// The machine's thread: a suspension is for starting to hold, for seeding a backup that
    /// awaits it, or for the mode's stream to the seeded one.
    private func suspended(_ machine: Machine) throws {
        if try output.startRequestedHolding() { return }
        if try handover.suspended(machine) { return }
        let (awaitingSeed, active) = link.channels
        if let awaitingSeed {
            try seeder.suspended(machine, seeding: awaitingSeed)
        } else if let active {
            try stream.suspended(machine, streamingTo: active)
        }
    }
}
