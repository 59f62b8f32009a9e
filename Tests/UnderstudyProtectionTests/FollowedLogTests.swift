import Foundation
import UnderstudyCore
import UnderstudyEventLog
import UnderstudyReplication
import XCTest

@testable import UnderstudyProtection

/// The log an active backup's machine follows: waits at its end, tells a sync point from a plain
/// suspension by the order the primary sends them in, and ends two ways.
final class FollowedLogTests: XCTestCase {
    private static func point(_ sync: UInt64, at position: UInt64) -> SyncPoint {
        SyncPoint(sync: sync, position: position, dirtyPages: 1, digest: sync, blockSize: 64, wholeState: nil)
    }

    private static let entry = EventLogEntry.clock(.monotonic, 42)
    private var entry: EventLogEntry { Self.entry }
    private func point(_ sync: UInt64, at position: UInt64) -> SyncPoint { Self.point(sync, at: position) }

    /// `entries` as the backup hands them over: one batch of records from log position `first`,
    /// checked as it arrived.
    private static func batches(_ entries: [EventLogEntry], first: Int) -> [BackupLog.Batch] {
        var writer = ByteWriter()
        for (offset, entry) in entries.enumerated() { EventLogCodec.append(entry, sequence: UInt64(first + offset), to: &writer) }
        var held = BackupLog(startingAt: UInt64(first))
        try! held.append(records: writer.bytes, first: UInt64(first))
        return held.takeBatches()
    }

    func testTheMachineWaitsForEntriesThatHaveNotArrived() {
        let log = FollowedLog(startingAt: 10)
        let arrived = expectation(description: "the waiting reader got the entry")
        DispatchQueue.global().async {
            XCTAssertEqual(log.entry(at: 10), Self.entry)
            arrived.fulfill()
        }
        usleep(50_000)
        log.append(Self.batches([entry], first: log.end))
        wait(for: [arrived], timeout: 5)
        XCTAssertEqual(log.end, 11)
        XCTAssertEqual(log.behind, 1, "the reader asked for 10; 10 is held and not yet past")
    }

    func testASyncPointIsFoundAndAPlainSuspensionIsPassed() {
        let log = FollowedLog(startingAt: 0)
        log.append(Self.batches([entry, entry], first: log.end))
        log.mark(point(1, at: 2))
        XCTAssertEqual(log.syncPoint(at: 2), point(1, at: 2))
        // Position 4: entries past it arrive with no sync point before them, so there is none.
        log.append(Self.batches([entry, entry, entry], first: log.end))
        XCTAssertNil(log.syncPoint(at: 4))
        // A sync point that arrives while the machine waits at its position is found.
        let found = expectation(description: "the sync point reached the waiting machine")
        DispatchQueue.global().async {
            XCTAssertEqual(log.syncPoint(at: 5), Self.point(2, at: 5))
            found.fulfill()
        }
        usleep(50_000)
        log.mark(point(2, at: 5))
        wait(for: [found], timeout: 5)
    }

    func testRepairsArriveAndEndingTheLogReleasesEveryWait() {
        let log = FollowedLog(startingAt: 0)
        let repair = BlockPatch(blockSize: 64, blocks: [.init(index: 3, bytes: Array(repeating: 7, count: 64))], state: [])
        log.deliver(repair, for: 9)
        XCTAssertEqual(log.repair(for: 9), repair)
        let released = expectation(description: "waits end with the log")
        released.expectedFulfillmentCount = 3
        DispatchQueue.global().async {
            XCTAssertNil(log.repair(for: 10))
            released.fulfill()
        }
        DispatchQueue.global().async {
            XCTAssertNil(log.syncPoint(at: 0))
            released.fulfill()
        }
        DispatchQueue.global().async {
            XCTAssertNil(log.entry(at: 0))
            released.fulfill()
        }
        usleep(50_000)
        log.finish()
        wait(for: [released], timeout: 5)
    }

    func testAFinishedLogStillGivesWhatItHoldsAndAnAbandonedOneDoesNot() {
        let finished = FollowedLog(startingAt: 0)
        finished.append(Self.batches([entry], first: finished.end))
        finished.finish()
        XCTAssertEqual(finished.entry(at: 0), entry, "a promoted backup replays what it holds")
        XCTAssertNil(finished.entry(at: 1))
        let abandoned = FollowedLog(startingAt: 0)
        abandoned.append(Self.batches([entry], first: abandoned.end))
        abandoned.abandon()
        XCTAssertNil(abandoned.entry(at: 0), "a session over without a takeover halts the machine")
    }

    func testTrimmedEntriesAreGoneAndTheHighestAcceptedConnectionIsKept() {
        let log = FollowedLog(startingAt: 100)
        log.append(Self.batches([.accept(ListenerID(0), .done(ConnectionID(7))), entry, entry], first: log.end))
        log.trim(below: 102)
        XCTAssertEqual(log.entry(at: 102), entry)
        log.finish()
        XCTAssertNil(log.entry(at: 100), "trimmed")
        XCTAssertEqual(log.highestAccepted, 7)
    }

    func testAFollowerStartedInsideABatchSkipsWhatItsSeedCovers() {
        let log = FollowedLog(startingAt: 12)
        log.append(Self.batches([.clock(.monotonic, 10), .clock(.monotonic, 11), .clock(.monotonic, 12)], first: 10))
        XCTAssertEqual(log.end, 13)
        XCTAssertEqual(log.entry(at: 12), .clock(.monotonic, 12))
    }

    /// A record whose checksum is right but whose payload is no entry (the primary's fault) is
    /// found when the machine reaches its batch: the log ends there, damaged, and the machine halts.
    func testARecordThatDoesNotDecodeEndsTheLogThere() {
        var writer = ByteWriter()
        writer.u64(1)
        writer.u8(99)  // no such entry type
        writer.u32(0)
        writer.u32(writer.bytes.withUnsafeBytes { CRC32C.checksum($0) })
        var held = BackupLog(startingAt: 1)
        XCTAssertNoThrow(try held.append(records: writer.bytes, first: 1), "checked, not decoded, as it arrives")
        let log = FollowedLog(startingAt: 0)
        log.append(Self.batches([entry], first: 0))
        log.append(held.takeBatches())
        XCTAssertEqual(log.end, 2)
        XCTAssertEqual(log.entry(at: 0), entry)
        XCTAssertNil(log.damage, "a batch is decoded when the machine reaches it")
        XCTAssertNil(log.entry(at: 1))
        XCTAssertEqual(log.damage, .malformed(entry: 1, reason: "unknown entry type 99"))
        XCTAssertTrue(log.abandoned)
    }
}
