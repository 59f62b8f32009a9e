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

    func testTheMachineWaitsForEntriesThatHaveNotArrived() {
        let log = FollowedLog(startingAt: 10)
        let arrived = expectation(description: "the waiting reader got the entry")
        DispatchQueue.global().async {
            XCTAssertEqual(log.entry(at: 10), Self.entry)
            arrived.fulfill()
        }
        usleep(50_000)
        log.append([entry])
        wait(for: [arrived], timeout: 5)
        XCTAssertEqual(log.end, 11)
        XCTAssertEqual(log.behind, 1, "the reader asked for 10; 10 is held and not yet past")
    }

    func testASyncPointIsFoundAndAPlainSuspensionIsPassed() {
        let log = FollowedLog(startingAt: 0)
        log.append([entry, entry])
        log.mark(point(1, at: 2))
        XCTAssertEqual(log.syncPoint(at: 2), point(1, at: 2))
        // Position 4: entries past it arrive with no sync point before them, so there is none.
        log.append([entry, entry, entry])
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
        finished.append([entry])
        finished.finish()
        XCTAssertEqual(finished.entry(at: 0), entry, "a promoted backup replays what it holds")
        XCTAssertNil(finished.entry(at: 1))
        let abandoned = FollowedLog(startingAt: 0)
        abandoned.append([entry])
        abandoned.abandon()
        XCTAssertNil(abandoned.entry(at: 0), "a session over without a takeover halts the machine")
    }

    func testTrimmedEntriesAreGoneAndTheHighestAcceptedConnectionIsKept() {
        let log = FollowedLog(startingAt: 100)
        log.append([.accept(ListenerID(0), .done(ConnectionID(7))), entry, entry])
        log.trim(below: 102)
        XCTAssertEqual(log.entry(at: 102), entry)
        log.finish()
        XCTAssertNil(log.entry(at: 100), "trimmed")
        XCTAssertEqual(log.highestAccepted, 7)
    }
}
