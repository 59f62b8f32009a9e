import Foundation
import UnderstudyCheckpoint
import UnderstudyCore
import UnderstudyEventLog
import UnderstudyMachine
import UnderstudyReplication

/// What a backup holds for one primary's connection: the prepared module and configuration, the
/// latest applied checkpoint as bytes (a machine is only built on promotion, DESIGN.md), and in
/// `llm` the log after it. Every message is checked whole before anything is changed
/// (invariant 3): a refused message leaves the replica exactly as it was. Log records may be
/// handled on the connection's event loop while a checkpoint is applied on the applier queue:
/// `lock` keeps the log and the state they change together consistent.
final class BackupReplica: @unchecked Sendable {
    struct Refusal: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }

    let mode: ReplicationMode
    let moduleHash: String
    private(set) var prepared: PreparedModule?
    private(set) var manifest: RecordingManifest?
    /// How the primary protects the machine: how this backup protects it once promoted.
    private(set) var protection: ProtectionSettings?
    private(set) var state: MachineState?
    private(set) var epoch: UInt64 = 0
    private(set) var log: BackupLog?
    /// `active`: the machine following the log, from the seed on.
    private(set) var follower: ActiveFollower?
    private let lock = NSLock()

    /// Log records (and in `active` sync points) can be taken as they come: llm holds its log
    /// after the first consistent checkpoint, active once its machine follows it.
    var takesLogDirectly: Bool { lock.withLock { mode == .active ? follower != nil : log != nil } }
    var heldEntryCount: Int { lock.withLock { log?.entryCount ?? 0 } }

    /// How many service addresses this backup would take over (its `--listen`).
    let listenerCount: Int

    /// What the hello declared: the module frame and the machine's memory must keep to them.
    private let moduleBytes: UInt64
    private let memoryLimitBytes: UInt64

    init(hello: WireMessage.Hello, listenerCount: Int) {
        mode = hello.mode
        moduleHash = hello.moduleHash
        moduleBytes = hello.moduleBytes
        memoryLimitBytes = hello.memoryLimitBytes
        self.listenerCount = listenerCount
    }

    /// True once a consistent checkpoint is applied: there is a machine to promote. Checkpoint 0
    /// is a pre-copy, taken while the guest ran, and only checkpoint 1 makes it exact. (Whether
    /// it protects anything is the primary's marker's business: `reachedMarker`.)
    var canPromote: Bool { state != nil && epoch >= 1 && prepared != nil && manifest != nil }

    /// The primary's `protecting` marker, until the copy reaches it.
    private var marker: (generation: UInt64, position: UInt64)?

    /// The marker's generation once the copy holds everything up to its position (the primary
    /// released what came before alone); then forgotten, so it is reported once.
    func reachedMarker() -> UInt64? {
        lock.withLock {
            guard let marker, canPromote, holdsUnlocked(position: marker.position) else { return nil }
            self.marker = nil
            return marker.generation
        }
    }

    /// Whether the copy holds everything up to a primary's `position` (a `protecting` marker's,
    /// a handover's): in `remus` the checkpoint of that epoch, otherwise the log below it.
    func holds(position: UInt64) -> Bool { lock.withLock { canPromote && holdsUnlocked(position: position) } }

    private func holdsUnlocked(position: UInt64) -> Bool {
        mode == .remus ? epoch >= position : (log?.end ?? 0) >= position
    }

    /// Handles one message from the primary; returns the acknowledgement to send, if any.
    func handle(_ message: WireMessage) throws(Refusal) -> WireMessage? {
        switch message {
        case .module(let bytes, let configuration):
            try adopt(module: bytes, configuration: configuration)
            return nil
        case .checkpoint, .compressedCheckpoint:
            let unpacked: (epoch: UInt64, bytes: [UInt8])?
            do {
                unpacked = try message.unpackedCheckpoint()
            } catch {
                throw Refusal("a compressed checkpoint does not expand: \(error)")
            }
            guard let (epoch, bytes) = unpacked else { return nil }
            try apply(checkpoint: bytes, epoch: epoch)
            return .checkpointApplied(epoch: epoch)
        case .logRecords(let first, let bytes):
            guard mode == .llm || mode == .active else { throw Refusal("log records in \(mode) mode") }
            lock.lock()
            defer { lock.unlock() }
            guard log != nil else { throw Refusal("log records before the seed checkpoint") }
            do {
                try log!.append(records: bytes, first: first)
            } catch {
                throw Refusal("\(error)")
            }
            let end = log!.end
            if let follower { handOver(to: follower) }
            return .logHeld(position: end)
        case .blockCheckpoint(let epoch, let packed):
            let patch: BlockPatch
            do {
                patch = try BlockPatch.decode(try packed.unpacked())
            } catch {
                throw Refusal("checkpoint \(epoch) refused: \(error)")
            }
            try apply(patch, epoch: epoch)
            return .checkpointApplied(epoch: epoch)
        case .syncPoint(let point):
            guard mode == .active, let follower = lock.withLock({ follower }) else { throw Refusal("a sync point outside a followed active log") }
            follower.log.mark(point)
            return nil
        case .protecting(let generation, let position):
            lock.withLock { marker = (generation, position) }
            return nil
        case .syncRepair(let sync, let packed):
            guard mode == .active, let follower = lock.withLock({ follower }) else { throw Refusal("a sync repair outside a followed active log") }
            do {
                follower.log.deliver(try BlockPatch.decode(try packed.unpacked()), for: sync)
            } catch {
                throw Refusal("sync \(sync)'s repair refused: \(error)")
            }
            return nil
        default:
            throw Refusal("unexpected \(message.kind) from the primary")
        }
    }

    /// `active`, once seeded: the machine that follows the log, built by `make` from the seed,
    /// and handed whatever log arrived meanwhile.
    func startFollowing(_ make: (PreparedModule, RecordingManifest, MachineState, UInt64) -> ActiveFollower) -> ActiveFollower? {
        lock.withLock {
            guard mode == .active, follower == nil, epoch >= 1, let prepared, let manifest, let state, let log else { return nil }
            let follower = make(prepared, manifest, state, log.start)
            handOver(to: follower)
            self.follower = follower
            return follower
        }
    }

    /// Under `lock`: the held log goes to the follower; it keeps no copy.
    private func handOver(to follower: ActiveFollower) {
        guard var log, log.entryCount > 0 else { return }
        follower.log.append(log.takeBatches())
        self.log = log
    }

    private func adopt(module bytes: [UInt8], configuration: [UInt8]) throws(Refusal) {
        guard prepared == nil else { throw Refusal("a second module on one connection") }
        guard bytes.count == moduleBytes else { throw Refusal("the module is \(bytes.count) bytes; the hello declared \(moduleBytes)") }
        // The primary sends the module it prepared: its bytes must be the ones the hello named,
        // checked before anything else is done with them; nothing is run through wasm-opt here.
        let prepared: PreparedModule
        do {
            prepared = try ModulePreparer.adopt(prepared: bytes, hash: moduleHash)
        } catch {
            throw Refusal("the module is refused: \(error)")
        }
        let replicated: ReplicatedMachine
        do {
            replicated = try JSONDecoder().decode(ReplicatedMachine.self, from: Data(configuration))
        } catch {
            throw Refusal("the machine's configuration is not readable: \(error)")
        }
        let manifest = replicated.manifest
        if let refusal = replicated.protection.refusal { throw Refusal("the primary's protection settings are refused: \(refusal)") }
        // Found now, not at the failover: a backup that could not take the service over is no backup.
        guard manifest.listenerCount == listenerCount else {
            throw Refusal("the primary's machine listens on \(manifest.listenerCount) addresses; this backup's --listen gives \(listenerCount)")
        }
        guard manifest.moduleHash == moduleHash else {
            throw Refusal("the machine's configuration names module \(manifest.moduleHash), not the \(moduleHash) the hello named")
        }
        guard manifest.configuration.memoryLimitBytes == memoryLimitBytes else {
            throw Refusal(
                "the machine's configuration limits memory to \(manifest.configuration.memoryLimitBytes) bytes; the hello declared \(memoryLimitBytes)")
        }
        self.prepared = prepared
        self.manifest = manifest
        protection = replicated.protection
    }

    private func checkWithinMemoryLimit(_ checkpoint: Checkpoint, epoch: UInt64) throws(Refusal) {
        guard UInt64(checkpoint.memoryBytes) <= memoryLimitBytes else {
            throw Refusal("checkpoint \(epoch) holds \(checkpoint.memoryBytes) bytes of memory, past the machine's limit of \(memoryLimitBytes)")
        }
    }

    /// A checkpoint after the seed, as the blocks that changed XORed with the state held here.
    private func apply(_ patch: BlockPatch, epoch: UInt64) throws(Refusal) {
        guard mode != .active else { throw Refusal("a block checkpoint in active mode") }
        guard state != nil, self.epoch >= 1 else { throw Refusal("checkpoint \(epoch) arrived before the seed") }
        guard epoch == self.epoch + 1 else { throw Refusal("checkpoint \(epoch) arrived after \(self.epoch)") }
        let bare: Checkpoint
        do {
            bare = try CheckpointCodec.decode(patch.state)
        } catch {
            throw Refusal("checkpoint \(epoch) refused: \(error)")
        }
        guard bare.moduleHash == moduleHash else { throw Refusal("checkpoint \(epoch) is of another module") }
        guard bare.kind == .delta, bare.pages.isEmpty, bare.zeroPages.isEmpty else { throw Refusal("checkpoint \(epoch) carries pages outside its blocks") }
        try checkWithinMemoryLimit(bare, epoch: epoch)
        if let outside = patch.blocks.first(where: { (Int($0.index) + 1) * patch.blockSize > Int(bare.memoryBytes) }) {
            throw Refusal("checkpoint \(epoch) has a block at byte \(Int(outside.index) * patch.blockSize), outside its \(bare.memoryBytes) bytes of memory")
        }
        lock.lock()
        defer { lock.unlock() }
        var log = self.log
        if mode == .llm {
            do {
                try log!.checkpointApplied(at: bare.logPosition)
            } catch {
                throw Refusal("\(error)")
            }
        }
        do {
            try bare.apply(onto: &state)  // globals, devices, memory growth; checked before it writes
        } catch {
            throw Refusal("checkpoint \(epoch) does not apply: \(error)")
        }
        state!.memory.withUnsafeMutableBytes { memory in
            for block in patch.blocks {
                let start = Int(block.index) * patch.blockSize
                for (offset, byte) in block.bytes.enumerated() { memory[start + offset] ^= byte }
            }
        }
        self.log = log
        self.epoch = epoch
    }

    private func apply(checkpoint bytes: [UInt8], epoch: UInt64) throws(Refusal) {
        guard prepared != nil else { throw Refusal("a checkpoint before the module") }
        // Checkpoint 0 may come in parts (a pre-copy), each one more epoch 0, until checkpoint 1.
        let expected = state == nil || self.epoch == 0 ? [0, 1] : [self.epoch + 1]
        guard mode != .active || epoch <= 1 else { throw Refusal("checkpoint \(epoch) in active mode, where only the seed's two come") }
        guard expected.contains(epoch) else { throw Refusal("checkpoint \(epoch) arrived after \(self.epoch)") }
        let checkpoint: Checkpoint
        do {
            checkpoint = try CheckpointCodec.decode(bytes)
        } catch {
            throw Refusal("checkpoint \(epoch) refused: \(error)")
        }
        guard checkpoint.moduleHash == moduleHash else { throw Refusal("checkpoint \(epoch) is of another module") }
        try checkWithinMemoryLimit(checkpoint, epoch: epoch)
        // Positions count entries: one this large is a lie, and would overflow the log's arithmetic.
        guard checkpoint.logPosition <= UInt64(Int.max / 2) else { throw Refusal("checkpoint \(epoch) names log position \(checkpoint.logPosition)") }
        lock.lock()
        defer { lock.unlock() }
        guard (checkpoint.kind == .full) == (state == nil) else {
            throw Refusal(state == nil ? "the first checkpoint is not full" : "a full checkpoint after the seed")
        }
        var log = self.log
        if (mode == .llm || mode == .active) && epoch >= 1 {
            do {
                if log == nil { log = BackupLog(startingAt: checkpoint.logPosition) }
                try log!.checkpointApplied(at: checkpoint.logPosition)
            } catch {
                throw Refusal("\(error)")
            }
        }
        // `apply` checks everything before it writes: a throw here leaves `state` as it was.
        do {
            try checkpoint.apply(onto: &state)
        } catch {
            throw Refusal("checkpoint \(epoch) does not apply: \(error)")
        }
        self.log = log
        self.epoch = epoch
    }
}
