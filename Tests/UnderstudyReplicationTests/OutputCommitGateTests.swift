import XCTest

@testable import UnderstudyReplication

final class OutputCommitGateTests: XCTestCase {
    func testOutputsLeaveOnlyOnceTheirPositionIsAcknowledgedAndInOrder() throws {
        var gate = OutputCommitGate<String>()
        XCTAssertNil(gate.hold("a", untilAcknowledged: 3))
        XCTAssertNil(gate.hold("b", untilAcknowledged: 3))
        XCTAssertNil(gate.hold("c", untilAcknowledged: 9))
        XCTAssertEqual(gate.heldCount, 3)
        XCTAssertEqual(try gate.acknowledge(below: 3), [], "position 3 itself is not acknowledged yet")
        XCTAssertEqual(try gate.acknowledge(below: 4), ["a", "b"])
        XCTAssertEqual(gate.oldestWaitingFor, 9)
        XCTAssertEqual(try gate.acknowledge(below: 9), [])
        XCTAssertEqual(try gate.acknowledge(below: 100), ["c"])
        XCTAssertEqual(gate.heldCount, 0)
        XCTAssertNil(gate.oldestWaitingFor)
    }

    func testAnOutputWhosePositionIsAlreadyAcknowledgedPassesStraightThrough() throws {
        var gate = OutputCommitGate<Int>()
        _ = try gate.acknowledge(below: 10)
        XCTAssertEqual(gate.hold(1, untilAcknowledged: 5), 1)
        XCTAssertNil(gate.hold(2, untilAcknowledged: 10), "position 10 itself is not acknowledged yet")
        XCTAssertNil(gate.hold(3, untilAcknowledged: 12))
        XCTAssertEqual(try gate.acknowledge(below: 11), [2])
        XCTAssertEqual(try gate.acknowledge(below: 13), [3])
    }

    func testAnAcknowledgementGoingBackwardsIsAnErrorAndChangesNothing() throws {
        var gate = OutputCommitGate<Int>()
        XCTAssertNil(gate.hold(1, untilAcknowledged: 5))
        _ = try gate.acknowledge(below: 3)
        XCTAssertThrowsError(try gate.acknowledge(below: 2)) { error in
            XCTAssertEqual(error as? OutputCommitGate<Int>.AcknowledgementError, .wentBackwards(from: 3, to: 2))
        }
        XCTAssertEqual(gate.acknowledged, 3)
        XCTAssertEqual(gate.heldCount, 1)
    }

    func testManyOutputsReleaseInOrderAcrossCompaction() throws {
        var gate = OutputCommitGate<Int>()
        var released: [Int] = []
        for value in 0..<10_000 {
            if let passed = gate.hold(value, untilAcknowledged: UInt64(value)) { released.append(passed) }
            if value % 7 == 0 { released += try gate.acknowledge(below: UInt64(value / 2)) }
        }
        released += gate.releaseAll()
        XCTAssertEqual(released, Array(0..<10_000))
    }
}
