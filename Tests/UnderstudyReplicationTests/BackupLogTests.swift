import UnderstudyCore
import UnderstudyEventLog
import XCTest

@testable import UnderstudyReplication

final class BackupLogTests: XCTestCase {
    private func records(_ entries: [EventLogEntry], first: UInt64) -> [UInt8] {
        var writer = ByteWriter()
        for (offset, entry) in entries.enumerated() { EventLogCodec.append(entry, sequence: first + UInt64(offset), to: &writer) }
        return writer.bytes
    }

    private let batch: [EventLogEntry] = [.clock(.monotonic, 1), .random([7]), .suspended(hostCalls: 1)]

    func testBatchesAppendInOrderAndACheckpointTrimsWhatItCovers() throws {
        var log = BackupLog()
        try log.append(records: records(batch, first: 0), first: 0)
        try log.append(records: records(batch, first: 3), first: 3)
        XCTAssertEqual(log.end, 6)
        try log.checkpointApplied(at: 3)
        XCTAssertEqual(log.start, 3)
        XCTAssertEqual(log.batches.count, 1, "the batch the checkpoint covers is let go")
        XCTAssertEqual(log.decodedEntries().entries, batch)
        try log.checkpointApplied(at: 2)  // older than what is held: nothing to trim
        XCTAssertEqual(log.start, 3)
        try log.checkpointApplied(at: 4)  // inside a batch: it is kept, its first entry is not replayed
        XCTAssertEqual(log.entryCount, 2)
        XCTAssertEqual(log.decodedEntries().entries, Array(batch[1...]))
    }

    func testAnActiveBackupTakesTheBatchesAndTheLogStartsOverAtItsEnd() throws {
        var log = BackupLog(startingAt: 10)
        try log.append(records: records(batch, first: 10), first: 10)
        let taken = log.takeBatches()
        XCTAssertEqual(taken.map(\.first), [10])
        XCTAssertEqual(taken[0].entries(from: 11).entries, batch[1...])
        XCTAssertEqual(log.start, 13)
        XCTAssertEqual(log.end, 13)
        XCTAssertEqual(log.entryCount, 0)
    }

    /// Records are checked as they arrive (framing, sequence, checksum) and decoded only when they
    /// are replayed: a record whose checksum is right but whose payload is not an entry (a
    /// primary's fault) is found then, and the entries before it are still replayed.
    func testAWellChecksummedRecordThatDoesNotDecodeIsFoundWhenReplayed() throws {
        var writer = ByteWriter()
        EventLogCodec.append(.clock(.monotonic, 1), sequence: 0, to: &writer)
        let start = writer.bytes.count
        writer.u64(1)
        writer.u8(99)  // no such entry type
        writer.u32(0)
        writer.u32(writer.bytes.withUnsafeBytes { CRC32C.checksum(UnsafeRawBufferPointer(rebasing: $0[start...])) })
        var log = BackupLog()
        try log.append(records: writer.bytes, first: 0)
        XCTAssertEqual(log.end, 2)
        let decoded = log.decodedEntries()
        XCTAssertEqual(decoded.entries, [.clock(.monotonic, 1)])
        XCTAssertEqual(decoded.damage, .malformed(entry: 1, reason: "unknown entry type 99"))
    }

    func testAGapADamagedBatchOrACheckpointPastTheEndChangesNothing() throws {
        var log = BackupLog()
        try log.append(records: records(batch, first: 0), first: 0)
        XCTAssertThrowsError(try log.append(records: records(batch, first: 5), first: 5)) { error in
            XCTAssertEqual(error as? BackupLog.Refusal, .gap(expected: 3, found: 5))
        }
        var damaged = records(batch, first: 3)
        damaged[damaged.count - 2] ^= 0x10  // inside the last record: the first two are whole
        XCTAssertThrowsError(try log.append(records: damaged, first: 3))
        XCTAssertEqual(log.end, 3, "no entry of a damaged batch is kept")
        XCTAssertThrowsError(try log.checkpointApplied(at: 4)) { error in
            XCTAssertEqual(error as? BackupLog.Refusal, .checkpointBeyondLog(position: 4, end: 3))
        }
        XCTAssertEqual(log.decodedEntries().entries, batch)
    }
}
