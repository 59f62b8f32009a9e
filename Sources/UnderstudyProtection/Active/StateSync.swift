import UnderstudyCheckpoint
import UnderstudyCore
import UnderstudyMachine
import UnderstudyReplication

/// What both sides of an `active` pair compute at a sync point, from a still machine's memory in
/// place: the same function on the same state gives the same answer, so agreement costs one
/// digest each way.
enum StateSync {
    static let pageSize = Checkpoint.pageSize

    /// Globals, devices and memory size, canonically: a checkpoint that carries no pages. The
    /// primary sends exactly these bytes when they differ, and the backup adopts them.
    static func stateBytes(of checkpoint: Checkpoint) -> [UInt8] {
        var bare = checkpoint
        bare.kind = .delta
        bare.pages = []
        bare.zeroPages = []
        return CheckpointCodec.encode(bare)
    }

    /// The digest of the written pages (`dirty`, ascending, each with its contents) and the state.
    static func digest(memory: UnsafeRawBufferPointer, dirty: [UInt32], stateBytes: [UInt8]) -> UInt64 {
        var summary = ByteWriter()
        summary.u64(Hash64.of(stateBytes))
        for page in dirty where (Int(page) + 1) * pageSize <= memory.count {
            summary.u32(page)
            summary.u64(Hash64.of(pageBytes(memory, page)))
        }
        return Hash64.of(summary.bytes)
    }

    /// The whole state (`--verify-syncs`).
    static func wholeState(memory: UnsafeRawBufferPointer, stateBytes: [UInt8]) -> UInt64 {
        Hash64.of(memory, seed: Hash64.of(stateBytes))
    }

    static func pageBytes(_ memory: UnsafeRawBufferPointer, _ page: UInt32) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: memory[Int(page) * pageSize..<(Int(page) + 1) * pageSize])
    }

    static func blockHashes(of page: UnsafeRawBufferPointer, blockSize: Int) -> [UInt64] {
        stride(from: 0, to: page.count, by: blockSize).map { Hash64.of(UnsafeRawBufferPointer(rebasing: page[$0..<$0 + blockSize])) }
    }

    static func blockHashes(memory: UnsafeRawBufferPointer, pages: [UInt32], blockSize: Int) -> [PageBlockHashes] {
        pages.filter { (Int($0) + 1) * pageSize <= memory.count }.map {
            PageBlockHashes(page: $0, hashes: blockHashes(of: pageBytes(memory, $0), blockSize: blockSize))
        }
    }
}

/// The primary's side of `active` syncs, on its sender queue: a copy of the machine as of the
/// last sync point (what the backup holds when it agrees), and the pages of the sync in flight.
/// A repair must describe the state at the sync's own position: a page the primary wrote is in
/// the sync's captured pages; a page it did not write is unchanged since the previous sync, so
/// it is in the copy. The guest itself has moved on by the time the backup answers.
final class SyncRepairer: @unchecked Sendable {
    let blockSize: Int
    /// The machine as of the latest sync point (memory and all); nil until a seed.
    private(set) var shadow: MachineState?
    private var pending: (sync: UInt64, captured: CapturedCheckpoint, stateBytes: [UInt8])?

    init(blockSize: Int) {
        precondition(SyncBlockSize.allowed.contains(blockSize), "block size \(blockSize)")
        self.blockSize = blockSize
    }

    /// A new backup: nothing it held before counts.
    func startOver(from seed: MachineState? = nil) {
        pending?.captured.recycle()
        pending = nil
        shadow = seed
    }

    /// A checkpoint the backup applied whole (the seed's).
    func advance(by checkpoint: Checkpoint) throws {
        try checkpoint.apply(onto: &shadow)
    }

    /// The sync just sent; its pages stay until the backup answers.
    func pend(sync: UInt64, captured: CapturedCheckpoint, stateBytes: [UInt8]) {
        precondition(pending == nil, "a sync is sent only once the previous one is answered")
        pending = (sync, captured, stateBytes)
    }

    /// The backup agreed: the copy moves to this sync's state.
    func matched(sync: UInt64) throws {
        guard let pending, pending.sync == sync else { throw ProtocolViolation("sync \(sync) answered, none such in flight") }
        try finish(pending)
    }

    /// The backup differs: the blocks where its hashes disagree with the state at the sync's
    /// position, and the globals and devices if their digest disagrees.
    func repair(sync: UInt64, backupPages: [PageBlockHashes], backupStateDigest: UInt64) throws -> SyncRepair {
        guard let pending, pending.sync == sync else { throw ProtocolViolation("sync \(sync) answered, none such in flight") }
        guard let shadow, let checkpoint = pending.captured.checkpoint else { throw ProtocolViolation("a sync with no copy to repair from") }
        let captured = Dictionary(uniqueKeysWithValues: checkpoint.pages.map { ($0.index, $0.bytes) })
        let zeroed = Set(checkpoint.zeroPages)
        let reported = Dictionary(uniqueKeysWithValues: backupPages.map { ($0.page, $0.hashes) })
        let pageCount = Int(checkpoint.memoryBytes) / StateSync.pageSize
        let zeroPage = [UInt8](repeating: 0, count: StateSync.pageSize)
        var blocks: [SyncRepair.Block] = []
        let examined = Set(captured.keys).union(zeroed).union(reported.keys).sorted()
        shadow.memory.withUnsafeBytes { copy in
            for page in examined where Int(page) < pageCount {
                // The backup's blocks: as it reported them, or, for a page it did not write, the copy's.
                func copyPage(_ body: (UnsafeRawBufferPointer) -> Void) {
                    if (Int(page) + 1) * StateSync.pageSize <= copy.count { body(StateSync.pageBytes(copy, page)) }
                    else { zeroPage.withUnsafeBytes(body) }
                }
                var theirs: [UInt64] = []
                if let hashes = reported[page] { theirs = hashes } else { copyPage { theirs = StateSync.blockHashes(of: $0, blockSize: blockSize) } }
                let compare = { (ours: UnsafeRawBufferPointer) in
                    for (slot, offset) in stride(from: 0, to: StateSync.pageSize, by: self.blockSize).enumerated() {
                        let block = UnsafeRawBufferPointer(rebasing: ours[offset..<offset + self.blockSize])
                        guard slot >= theirs.count || Hash64.of(block) != theirs[slot] else { continue }
                        let index = UInt32((Int(page) * StateSync.pageSize + offset) / self.blockSize)
                        blocks.append(SyncRepair.Block(index: index, bytes: Array(block)))
                    }
                }
                if let bytes = captured[page] { bytes.withUnsafeBytes(compare) }
                else if zeroed.contains(page) { zeroPage.withUnsafeBytes(compare) }
                else { copyPage(compare) }
            }
        }
        let state = Hash64.of(pending.stateBytes) == backupStateDigest ? [] : pending.stateBytes
        try finish(pending)
        return SyncRepair(blockSize: blockSize, blocks: blocks, state: state)
    }

    private func finish(_ done: (sync: UInt64, captured: CapturedCheckpoint, stateBytes: [UInt8])) throws {
        pending = nil
        defer { done.captured.recycle() }
        if let checkpoint = done.captured.checkpoint { try checkpoint.apply(onto: &shadow) }
    }
}
