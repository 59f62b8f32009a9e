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
