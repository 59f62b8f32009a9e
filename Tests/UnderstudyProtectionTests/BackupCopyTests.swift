import UnderstudyCore
import UnderstudyMachine
import UnderstudyReplication
import XCTest

@testable import UnderstudyCheckpoint
@testable import UnderstudyProtection

/// The primary's copy of what its backup holds: checkpoints as XORed blocks that rebuild the new
/// state exactly, and active repairs that name exactly the blocks where the backup differs.
final class BackupCopyTests: XCTestCase {
    private let pageSize = Checkpoint.pageSize

    private func state(_ memory: [UInt8], global: UInt64 = 1) -> MachineState {
        MachineState(
            memory: memory, globals: [.init(name: "g", kind: .i64, bits: global)], descriptors: DescriptorTable(listenerCount: 1),
            unwindDataAddress: 64)
    }

    private func captured(_ new: [UInt8], dirty: [UInt32], global: UInt64 = 1, position: UInt64 = 5) -> CapturedCheckpoint {
        let checkpoint = Checkpoint.delta(of: state(new, global: global), dirtyPages: dirty, moduleHash: "m", logPosition: position)
        return CapturedCheckpoint(checkpoint: checkpoint, pageBuffer: [], pool: PageBufferPool())
    }

    private func randomMemory(pages: Int, _ random: inout SeededGenerator) -> [UInt8] {
        (0..<pages * pageSize).map { _ in UInt8.random(in: 0...255, using: &random) }
    }

    func testAPatchRebuildsTheNewStateFromTheOldAndCarriesOnlyChangedBlocks() throws {
        var random = SeededGenerator(seed: 5)
        for blockSize in SyncBlockSize.allowed {
            let old = randomMemory(pages: 8, &random)
            var new = old
            new[3 * pageSize + 10] ^= 1  // one byte: one block
            for offset in 0..<pageSize { new[5 * pageSize + offset] = 0 }  // a page zeroed: every block that was not zero
            new += [UInt8](repeating: 0, count: pageSize) + randomMemory(pages: 1, &random)  // grown by two pages, one written
            let copy = BackupCopy(blockSize: blockSize)
            copy.startOver(from: state(old))
            let patch = try copy.patch(for: captured(new, dirty: [3, 5, 6, 8, 9]))
            XCTAssertEqual(patch.blocks.count, 1 + 2 * (pageSize / blockSize), "block size \(blockSize)")
            // What the backup does with it: grow to the new size, XOR each block in.
            var rebuilt = old + [UInt8](repeating: 0, count: new.count - old.count)
            for block in patch.blocks {
                for (offset, byte) in block.bytes.enumerated() { rebuilt[Int(block.index) * blockSize + offset] ^= byte }
            }
            XCTAssertEqual(rebuilt, new, "block size \(blockSize)")
            XCTAssertEqual(copy.shadow?.memory, new, "the copy moves on with the patch")
            XCTAssertEqual(try CheckpointCodec.decode(patch.state).logPosition, 5)
        }
    }

    func testARepairNamesTheBlocksWhereTheBackupDiffersAtTheSyncPosition() throws {
        var random = SeededGenerator(seed: 9)
        let blockSize = 64
        let atLastSync = randomMemory(pages: 6, &random)
        var atThisSync = atLastSync
        atThisSync[1 * pageSize + 100] ^= 0xff  // the primary wrote pages 1 and 2
        atThisSync[2 * pageSize + 7] ^= 0x0f
        let copy = BackupCopy(blockSize: blockSize)
        copy.startOver(from: state(atLastSync))
        let sync = captured(atThisSync, dirty: [1, 2], global: 2)
        let stateBytes = StateSync.stateBytes(of: sync.checkpoint!)
        try copy.pend(sync: 3, captured: sync, stateBytes: stateBytes)

        // The backup wrote pages 1 and 4 (not 2): page 1 matches except one block, page 4 is a
        // page the primary never wrote, and page 2 it missed (it still holds the last sync's).
        var backup = atThisSync
        backup[1 * pageSize + 1000] ^= 1
        backup[2 * pageSize + 7] ^= 0x0f
        backup[4 * pageSize + 200] ^= 2
        let reported = backup.withUnsafeBytes { StateSync.blockHashes(memory: $0, pages: [1, 4], blockSize: blockSize) }
        let repair = try copy.repair(sync: 3, backupPages: reported, backupStateDigest: Hash64.of(stateBytes))
        let expected: [UInt32] = [UInt32(pageSize + 960) / 64, UInt32(2 * pageSize) / 64, UInt32(4 * pageSize + 192) / 64]
        XCTAssertEqual(repair.blocks.map(\.index), expected)
        XCTAssertTrue(repair.state.isEmpty, "the globals agreed")
        for block in repair.blocks {
            for (offset, byte) in block.bytes.enumerated() { backup[Int(block.index) * blockSize + offset] = byte }
        }
        XCTAssertEqual(backup, atThisSync, "the repaired backup holds the primary's state at the sync")
        XCTAssertEqual(copy.shadow?.memory, atThisSync, "the copy moved on to this sync")
        XCTAssertThrowsError(try copy.matched(sync: 3), "answered once")

        // Globals that differ travel as the state bytes.
        try copy.pend(sync: 4, captured: captured(atThisSync, dirty: [], global: 3), stateBytes: [9, 9])
        XCTAssertEqual(try copy.repair(sync: 4, backupPages: [], backupStateDigest: 0).state, [9, 9])

        // A second sync while one is unanswered breaks the pacing: refused, not a trap.
        try copy.pend(sync: 5, captured: captured(atThisSync, dirty: []), stateBytes: [])
        XCTAssertThrowsError(try copy.pend(sync: 6, captured: captured(atThisSync, dirty: []), stateBytes: []))
        XCTAssertThrowsError(try copy.matched(sync: 5), "both are dropped: the connection is refused and seeded again")
    }
}
