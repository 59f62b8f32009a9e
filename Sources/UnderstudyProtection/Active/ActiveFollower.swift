import Foundation
import Logging
import UnderstudyCheckpoint
import UnderstudyCore
import UnderstudyEventLog
import UnderstudyMachine
import UnderstudyReplication

/// An `active` backup's running machine (Lu & Chiueh): restored from the seed, it executes the
/// primary's event log as it arrives, on a thread of its own, its outputs checked against the
/// log's digests and sent nowhere. At each sync point it stops where the primary stopped and
/// compares (`StateSync`); what differs the primary repairs. At a promotion it replays the few
/// entries it is behind and goes live in place: no restore, no replay of an interval.
final class ActiveFollower: @unchecked Sendable {
    struct Options {
        /// Test-only fault injection: corrupt memory at this sync point, before comparing.
        var corruptAtSync: UInt64?
    }

    let log: FollowedLog
    private let prepared: PreparedModule
    private let manifest: RecordingManifest
    private let seed: MachineState
    private let seedPosition: UInt64
    private let send: (WireMessage) -> Void
    private let onDiverged: (String) -> Void
    private let logger: Logger
    private let metrics: ReplicationMetrics
    private let options: Options
    /// The machine's; a promoted primary's replicator requests its suspensions too.
    let suspension = SuspensionRequest()
    private let exited = DispatchSemaphore(value: 0)
    /// Signalled once the machine is built (or failed to be).
    private let ready = DispatchSemaphore(value: 0)
    private let lock = NSLock()
    /// Set on the machine's thread once it is built; read by a promotion.
    private var world: ReplayThenLiveWorld?
    private var machine: Machine?
    private var outcome: Result<Int32, Error>?
    private var promotedAt: ContinuousClock.Instant?

    init(
        prepared: PreparedModule, manifest: RecordingManifest, seed: MachineState, position: UInt64, options: Options,
        logger: Logger, metrics: ReplicationMetrics, send: @escaping (WireMessage) -> Void, onDiverged: @escaping (String) -> Void
    ) {
        self.prepared = prepared
        self.manifest = manifest
        self.seed = seed
        seedPosition = position
        self.options = options
        self.logger = logger
        self.metrics = metrics
        self.send = send
        self.onDiverged = onDiverged
        log = FollowedLog(startingAt: position)
    }

    func start() {
        let thread = Thread { [self] in
            let result = Result<Int32, Error> { try follow() }
            lock.withLock { outcome = result }
            if lock.withLock({ world == nil }) { ready.signal() }
            let notPromoted = lock.withLock({ promotedAt == nil })
            if let damage = log.damage, notPromoted {
                logger.error("the backup's machine stopped following the primary", metadata: ["reason": "\(damage)"])
                onDiverged("the primary's log does not decode: \(damage)")
            } else if case .failure(let error) = result, !log.abandoned, notPromoted {
                logger.error("the backup's machine stopped following the primary", metadata: ["reason": "\(error)"])
                onDiverged("\(error)")
            }
            exited.signal()
        }
        thread.name = "understudy.follower"
        thread.stackSize = 16 << 20
        thread.start()
    }

    /// The session is over without a takeover: the machine halts at the end of what it has.
    func abandon() { log.abandon() }

    /// Takes the service over: the live world answers once the machine has used up the log.
    /// Returns the guest's exit code once it exits. `around` builds the world it answers from on
    /// top of the live one (a promoted primary's), given the tracker of the machine's dirty pages
    /// (one per memory); `onLive` runs on the machine's thread once it is live.
    func takeOver(
        listening addresses: [ServiceAddress], serviceIP: ServiceIPHolder?, detected: ContinuousClock.Instant,
        around: (LiveWorld, CheckpointCapture) throws -> MachineWorld, onLive: @escaping (Machine) -> Void
    ) throws -> Int32 {
        let live = try Takeover.openService(addresses, serviceIP: serviceIP, suspension: suspension, logger: logger)
        live.reserveConnections(through: max(seed.descriptors.highestConnection, log.highestAccepted))
        ready.wait()
        ready.signal()
        let behind = log.behind
        let (world, machine) = lock.withLock { () -> (ReplayThenLiveWorld?, Machine?) in
            promotedAt = detected
            return (self.world, self.machine)
        }
        guard let world, let machine else { throw TakeoverError("the backup's machine did not start") }
        let logger = logger
        world.onWentLive = {
            logger.notice(
                "caught up with the primary's log; live",
                metadata: [
                    "entriesBehindAtDetection": "\(behind)",
                    "sinceDetectionMillis": "\((ContinuousClock.now - detected).milliseconds)",
                ])
            onLive(machine)
        }
        // Built before the machine can go live; the capture is the machine thread's until then,
        // and the caller's only after.
        world.live = try around(live, capture)
        log.finish()
        exited.wait()
        exited.signal()
        switch lock.withLock({ outcome! }) {
        case .success(let code): return code
        case .failure(let error): throw error
        }
    }

    // MARK: The machine's thread

    private var capture: CheckpointCapture!
    private var scratch: [UInt8] = []

    private func follow() throws -> Int32 {
        let world = ReplayThenLiveWorld(replaying: ReplayWorld(following: log, startingAt: Int(seedPosition)), then: nil)
        let machine = try Machine(
            restoring: seed, prepared: prepared, world: world, suspension: suspension, configuration: manifest.configuration)
        capture = CheckpointCapture(moduleHash: prepared.hash)
        _ = try capture.writtenPages(machine)  // tracking starts from the seed
        machine.onSuspended = { [unowned self, unowned world] machine in try synchronise(machine, world) }
        lock.withLock { (self.world, self.machine) = (world, machine) }
        ready.signal()
        logger.notice("following the primary's log", metadata: ["from": "\(seedPosition)"])
        return try machine.run()
    }

    private func synchronise(_ machine: Machine, _ world: ReplayThenLiveWorld) throws {
        guard !world.isLive else { return }
        let position = world.replayPosition
        defer { log.trim(below: position) }
        guard let point = log.syncPoint(at: position) else { return }
        metrics.followLag.record(Int64(log.behind))
        if point.sync == options.corruptAtSync { corruptMemory(machine, sync: point.sync) }
        let written = try capture.writtenPages(machine)
        let stateBytes = try currentStateBytes(machine, position: point.position)
        let digest = machine.withLinearMemory { StateSync.digest(memory: $0, dirty: written, stateBytes: stateBytes) }
        metrics.syncs.increment()
        if digest == point.digest {
            send(.syncMatched(sync: point.sync))
        } else {
            let hashes = machine.withLinearMemory { StateSync.blockHashes(memory: $0, pages: written, blockSize: Int(point.blockSize)) }
            send(.syncDiffers(sync: point.sync, blockSize: point.blockSize, stateDigest: Hash64.of(stateBytes), hashes: PageBlockHashes.encode(hashes)))
            guard let repair = log.repair(for: point.sync) else {
                // The primary died between its answer and its repair: there is nothing to repair
                // from, and serving is better than not. Said loudly.
                if !log.abandoned {
                    logger.error(
                        "taking over with a state that differed from the primary's at a sync and was not repaired",
                        metadata: ["sync": "\(point.sync)", "logPosition": "\(point.position)"])
                }
                return
            }
            try apply(repair, to: machine, sync: point, writtenPages: written.count)
        }
        if let expected = point.wholeState { try verify(machine, against: point, expected: expected) }
    }

    private func currentStateBytes(_ machine: Machine, position: UInt64) throws -> [UInt8] {
        let rest = try machine.captureStateExceptMemory()
        let bare = machine.withLinearMemory {
            Checkpoint.delta(memory: $0, rest: rest, dirtyPages: [], moduleHash: prepared.hash, logPosition: position, pageBuffer: &scratch)
        }
        return StateSync.stateBytes(of: bare)
    }

    private func apply(_ repair: BlockPatch, to machine: Machine, sync point: SyncPoint, writtenPages: Int) throws {
        // Everything is checked before anything changes: a refused repair leaves the machine as it was.
        var adopted: (state: MachineState, memoryBytes: Int)?
        if !repair.state.isEmpty {
            let state = try CheckpointCodec.decode(repair.state)
            guard state.moduleHash == prepared.hash, state.kind == .delta, state.pages.isEmpty, state.zeroPages.isEmpty,
                state.memoryBytes <= UInt64(Int.max)
            else { throw DivergenceError("sync \(point.sync)'s repair carries a state that is not a bare one of this module") }
            let rest = MachineState(
                memory: [], globals: state.globals, descriptors: state.descriptors, unwindDataAddress: state.unwindDataAddress,
                unwoundStack: state.unwoundStack)
            adopted = (rest, Int(state.memoryBytes))
        }
        let memoryBytes = max(machine.withLinearMemory { $0.count }, adopted?.memoryBytes ?? 0)
        if let outside = repair.blocks.first(where: { (Int($0.index) + 1) * repair.blockSize > memoryBytes }) {
            throw DivergenceError("a repair block at byte \(Int(outside.index) * repair.blockSize) lies outside the backup's \(memoryBytes) bytes of memory")
        }
        if let adopted { try machine.adoptStateExceptMemory(adopted.state, memoryBytes: adopted.memoryBytes) }
        machine.withMutableLinearMemory { memory in
            for block in repair.blocks {
                let offset = Int(block.index) * repair.blockSize
                block.bytes.withUnsafeBytes { (memory.baseAddress! + offset).copyMemory(from: $0.baseAddress!, byteCount: repair.blockSize) }
            }
        }
        _ = try capture.writtenPages(machine)  // the repair's own writes are not the guest's
        let pages = Set(repair.blocks.map { Int($0.index) * repair.blockSize / StateSync.pageSize }).sorted()
        metrics.divergences.increment()
        metrics.repairedBlocks.increment(by: Int64(repair.blocks.count))
        logger.warning(
            "sync found the backup diverged; repaired",
            metadata: [
                "sync": "\(point.sync)", "logPosition": "\(point.position)", "blocks": "\(repair.blocks.count)",
                "blockSize": "\(repair.blockSize)", "pages": "\(pages.prefix(8).map(String.init).joined(separator: ","))\(pages.count > 8 ? ",…" : "")",
                "globalsOrDevices": "\(repair.state.isEmpty ? "agreed" : "repaired")",
                "pagesWrittenHere": "\(writtenPages)", "pagesWrittenByPrimary": "\(point.dirtyPages)",
            ])
    }

    /// `--verify-syncs`: the whole state, after the sync, against the primary's at the same point.
    private func verify(_ machine: Machine, against point: SyncPoint, expected: UInt64) throws {
        let stateBytes = try currentStateBytes(machine, position: point.position)
        let whole = machine.withLinearMemory { StateSync.wholeState(memory: $0, stateBytes: stateBytes) }
        guard whole == expected else {
            metrics.verificationFailures.increment()
            throw DivergenceError("after sync \(point.sync) the backup's state still differs from the primary's at log position \(point.position)")
        }
        metrics.verified.increment()
    }

    /// Flips bytes at seeded places across memory, as a fault would.
    private func corruptMemory(_ machine: Machine, sync: UInt64) {
        var generator = SeededGenerator(seed: sync)
        let spots = machine.withMutableLinearMemory { memory -> [Int] in
            (0..<4).map { _ in
                let offset = Int.random(in: 0..<(memory.count - 16), using: &generator)
                for byte in offset..<offset + 16 { memory[byte] ^= 0xA5 }
                return offset
            }
        }
        logger.warning("fault injection: corrupted the backup's memory", metadata: ["sync": "\(sync)", "offsets": "\(spots)"])
    }
}

struct DivergenceError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
