import Foundation
import UnderstudyCheckpoint
import UnderstudyCore
import UnderstudyMachine
import UnderstudyReplication

/// The primary's copy of the machine as its backup holds it, kept on the sender queue (issue 5,
/// FGBI): what lets memory travel as sub-page blocks.
///
/// - `remus` and `llm`: each checkpoint goes out as the blocks of its pages that differ from the
///   copy, XORed with it (mostly zeros where a few bytes changed, which lz4 or zstd then
///   squeeze), and the copy moves on with it.
/// - `active`: the copy is the state at the last sync point, when the backup agreed. The pages of
///   the sync in flight wait here for its answer, because a repair must describe the state at
///   the sync's own position: a page the primary wrote is in the sync's captured pages; a page it
///   did not write is unchanged since the previous sync, so it is in the copy. The guest itself
///   has moved on by the time the backup answers.
final class BackupCopy: @unchecked Sendable {
    let blockSize: Int
    /// The machine as the backup holds it (memory and all); nil until a seed.
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

    /// `remus`, `llm`: `captured` as the blocks that differ from the copy, XORed with it; the
    /// copy then holds `captured`'s state, as the backup will once it applies the patch.
    func patch(for captured: CapturedCheckpoint) throws -> BlockPatch {
        guard let checkpoint = captured.checkpoint else { throw ProtocolViolation("a checkpoint already sent") }
        guard shadow != nil else { throw ProtocolViolation("a delta checkpoint with no seed under it") }
        var blocks: [BlockPatch.Block] = []
        let zeroPage = [UInt8](repeating: 0, count: StateSync.pageSize)
        shadow!.memory.withUnsafeBytes { copy in
            func diff(_ page: UInt32, _ new: UnsafeRawBufferPointer) {
                let inCopy = (Int(page) + 1) * StateSync.pageSize <= copy.count
                zeroPage.withUnsafeBytes { zeros in
                    let old = inCopy ? StateSync.pageBytes(copy, page) : zeros
                    for offset in stride(from: 0, to: StateSync.pageSize, by: blockSize) {
                        let range = offset..<offset + blockSize
                        guard memcmp(new.baseAddress! + offset, old.baseAddress! + offset, blockSize) != 0 else { continue }
                        let index = UInt32((Int(page) * StateSync.pageSize + offset) / blockSize)
                        blocks.append(BlockPatch.Block(index: index, bytes: zip(new[range], old[range]).map { $0 ^ $1 }))
                    }
                }
            }
            for page in checkpoint.pages { page.bytes.withUnsafeBytes { diff(page.index, $0) } }
            for page in checkpoint.zeroPages { zeroPage.withUnsafeBytes { diff(page, $0) } }
        }
        try checkpoint.apply(onto: &shadow)
        return BlockPatch(blockSize: blockSize, blocks: blocks.sorted { $0.index < $1.index }, state: StateSync.stateBytes(of: checkpoint))
    }

    /// The sync just sent; its pages stay until the backup answers.
    func pend(sync: UInt64, captured: CapturedCheckpoint, stateBytes: [UInt8]) throws {
        // One in flight at a time (the primary paces them); a second means the pacing was
        // broken, by a backup's misbehaviour or a bug, and this copy can no longer be trusted.
        if let stale = pending {
            stale.captured.recycle()
            pending = nil
            captured.recycle()
            throw ProtocolViolation("sync \(sync) taken while sync \(stale.sync) was unanswered")
        }
        pending = (sync, captured, stateBytes)
    }

    /// The backup agreed: the copy moves to this sync's state.
    func matched(sync: UInt64) throws {
        guard let pending, pending.sync == sync else { throw ProtocolViolation("sync \(sync) answered, none such in flight") }
        try finish(pending)
    }

    /// The backup differs: the blocks where its hashes disagree with the state at the sync's
    /// position, and the globals and devices if their digest disagrees.
    func repair(sync: UInt64, backupPages: [PageBlockHashes], backupStateDigest: UInt64) throws -> BlockPatch {
        guard let pending, pending.sync == sync else { throw ProtocolViolation("sync \(sync) answered, none such in flight") }
        guard let shadow, let checkpoint = pending.captured.checkpoint else { throw ProtocolViolation("a sync with no copy to repair from") }
        let captured = Dictionary(uniqueKeysWithValues: checkpoint.pages.map { ($0.index, $0.bytes) })
        let zeroed = Set(checkpoint.zeroPages)
        let reported = Dictionary(uniqueKeysWithValues: backupPages.map { ($0.page, $0.hashes) })
        let pageCount = Int(checkpoint.memoryBytes) / StateSync.pageSize
        let zeroPage = [UInt8](repeating: 0, count: StateSync.pageSize)
        var blocks: [BlockPatch.Block] = []
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
                        blocks.append(BlockPatch.Block(index: index, bytes: Array(block)))
                    }
                }
                if let bytes = captured[page] { bytes.withUnsafeBytes(compare) }
                else if zeroed.contains(page) { zeroPage.withUnsafeBytes(compare) }
                else { copyPage(compare) }
            }
        }
        let state = Hash64.of(pending.stateBytes) == backupStateDigest ? [] : pending.stateBytes
        try finish(pending)
        return BlockPatch(blockSize: blockSize, blocks: blocks, state: state)
    }

    private func finish(_ done: (sync: UInt64, captured: CapturedCheckpoint, stateBytes: [UInt8])) throws {
        pending = nil
        defer { done.captured.recycle() }
        if let checkpoint = done.captured.checkpoint { try checkpoint.apply(onto: &shadow) }
    }
}
