import UnderstudyCore
import UnderstudyEventLog
import XCTest

/// A live world that answers from fixed values and notes what reached it.
private final class ScriptedLiveWorld: MachineWorld {
    var calls: [String] = []
    func clockNow(_ clock: WorldClock) -> UInt64 {
        calls.append("clock")
        return 100
    }
    func randomBytes(into buffer: UnsafeMutableRawBufferPointer) { calls.append("random") }
    func accept(listener: ListenerID) -> WorldResult<ConnectionID> {
        calls.append("accept")
        return .done(ConnectionID(8))
    }
    func receive(connection: ConnectionID, into buffer: UnsafeMutableRawBufferPointer) -> WorldResult<Int> {
        calls.append("receive \(connection.value)")
        return .failed(errno: 104)
    }
    func send(connection: ConnectionID, bytes: UnsafeRawBufferPointer) -> WorldResult<Int> {
        calls.append("send \(connection.value)")
        return .done(bytes.count)
    }
    func shutdown(connection: ConnectionID, reading: Bool, writing: Bool) {}
    func close(connection: ConnectionID) { calls.append("close \(connection.value)") }
    func close(listener: ListenerID) {}
    func poll(_ interests: [PollInterest], timeoutNanos: UInt64?) -> PollOutcome { .timedOut }
    func console(_ stream: ConsoleStream, bytes: UnsafeRawBufferPointer) {}
}

final class ReplayThenLiveWorldTests: XCTestCase {
    private let reply = Array("+OK\r\n".utf8)

    private var log: [EventLogEntry] {
        [
            .clock(.monotonic, 500),
            .accept(ListenerID(0), .done(ConnectionID(7))),
            .receive(ConnectionID(7), .done(Array("PING".utf8))),
            .send(ConnectionID(7), offered: UInt32(reply.count), digest: reply.withUnsafeBytes { OutputDigest.of($0) }, result: .done(5)),
        ]
    }

    func testTheLogAnswersUntilItEndsThenTheLiveWorldWithTimeNeverGoingBack() {
        let live = ScriptedLiveWorld()
        let world = ReplayThenLiveWorld(replaying: ReplayWorld(entries: log, startingAt: 0), then: live)
        var wentLive = 0
        world.onWentLive = { wentLive += 1 }

        XCTAssertEqual(world.clockNow(.monotonic), 500)
        XCTAssertEqual(world.accept(listener: ListenerID(0)), .done(ConnectionID(7)))
        var buffer = [UInt8](repeating: 0, count: 16)
        XCTAssertEqual(buffer.withUnsafeMutableBytes { world.receive(connection: ConnectionID(7), into: $0) }, .done(4))
        XCTAssertEqual(reply.withUnsafeBytes { world.send(connection: ConnectionID(7), bytes: $0) }, .done(5))
        XCTAssertEqual(live.calls, [], "nothing reaches the live world while the log answers; the replayed reply is not sent again")
        XCTAssertFalse(world.isLive)

        XCTAssertEqual(world.clockNow(.monotonic), 500, "a live clock behind the replayed one is held at the replayed reading")
        XCTAssertTrue(world.isLive)
        XCTAssertEqual(wentLive, 1)
        XCTAssertEqual(buffer.withUnsafeMutableBytes { world.receive(connection: ConnectionID(7), into: $0) }, .failed(errno: 104))
        XCTAssertEqual(world.accept(listener: ListenerID(0)), .done(ConnectionID(8)))
        XCTAssertEqual(live.calls, ["clock", "receive 7", "accept"])
        XCTAssertEqual(wentLive, 1)
        XCTAssertNil(world.haltReason)
    }

    func testADivergingReplayHaltsInsteadOfGoingLive() {
        let live = ScriptedLiveWorld()
        let world = ReplayThenLiveWorld(replaying: ReplayWorld(entries: log, startingAt: 0), then: live)
        _ = world.accept(listener: ListenerID(0))  // the log has a clock reading first
        XCTAssertNotNil(world.divergence)
        XCTAssertNotNil(world.haltReason)
        _ = world.clockNow(.monotonic)
        XCTAssertEqual(live.calls, [], "a diverged machine never reaches clients")
        XCTAssertFalse(world.isLive)
    }
}
