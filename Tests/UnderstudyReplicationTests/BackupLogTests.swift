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
        XCTAssertEqual(log.entries, batch)
        try log.checkpointApplied(at: 2)  // older than what is held: nothing to trim
        XCTAssertEqual(log.start, 3)
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
        XCTAssertEqual(log.entries, batch)
    }
}
