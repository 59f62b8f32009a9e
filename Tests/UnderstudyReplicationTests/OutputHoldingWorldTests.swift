import UnderstudyCore
import XCTest

@testable import UnderstudyReplication

/// A world that records what reaches it, and whose sockets take at most `capacity` bytes per
/// send (to exercise partial sends).
private final class SocketsWorld: MachineWorld {
    var delivered: [ConnectionID: [UInt8]] = [:]
    var events: [String] = []
    var capacity = Int.max
    var clock: UInt64 = 0

    func clockNow(_ clock: WorldClock) -> UInt64 { self.clock }
    func randomBytes(into buffer: UnsafeMutableRawBufferPointer) {}
    func accept(listener: ListenerID) -> WorldResult<ConnectionID> { .wouldBlock }
    func receive(connection: ConnectionID, into buffer: UnsafeMutableRawBufferPointer) -> WorldResult<Int> { .wouldBlock }
    func send(connection: ConnectionID, bytes: UnsafeRawBufferPointer) -> WorldResult<Int> {
        if capacity == 0 { return .wouldBlock }
        let taken = min(capacity, bytes.count)
        delivered[connection, default: []] += bytes.prefix(taken)
        events.append("send \(connection.value) \(taken)")
        return .done(taken)
    }
    func shutdown(connection: ConnectionID, reading: Bool, writing: Bool) { events.append("shutdown \(connection.value)") }
    func close(connection: ConnectionID) { events.append("close \(connection.value)") }
    func close(listener: ListenerID) {}
    /// Sockets with room are writable; with nothing ready, the wake for released output (as
    /// the live world reports it).
    func poll(_ interests: [PollInterest], timeoutNanos: UInt64?) -> PollOutcome {
        guard capacity > 0 else { return .ready([]) }
        return .ready(
            interests.indices.filter { interests[$0].writable }.map {
                PollReadiness(interest: $0, readable: false, writable: true, hangup: false)
            })
    }
    func console(_ stream: ConsoleStream, bytes: UnsafeRawBufferPointer) {}
}

final class OutputHoldingWorldTests: XCTestCase {
    private func send(_ world: OutputHoldingWorld, _ text: String, on connection: UInt64 = 1) -> WorldResult<Int> {
        Array(text.utf8).withUnsafeBytes { world.send(connection: ConnectionID(connection), bytes: $0) }
    }

    private func text(_ sockets: SocketsWorld, _ connection: UInt64 = 1) -> String {
        String(decoding: sockets.delivered[ConnectionID(connection)] ?? [], as: UTF8.self)
    }

    func testUnprotectedOutputGoesStraightThrough() {
        let sockets = SocketsWorld()
        let world = OutputHoldingWorld(holding: sockets)
        XCTAssertEqual(send(world, "hello"), .done(5))
        XCTAssertEqual(text(sockets), "hello")
    }

    func testProtectedOutputWaitsForItsPositionThenLeavesInOrderWithTheCloseBehindIt() throws {
        let sockets = SocketsWorld()
        let world = OutputHoldingWorld(holding: sockets)
        var position: UInt64 = 10
        world.positionOfNextOutput = { position }
        world.protect(acknowledgedBelow: 10)

        XCTAssertEqual(send(world, "one "), .done(4), "the guest is told the send succeeded")
        position = 11
        XCTAssertEqual(send(world, "two"), .done(3))
        world.close(connection: ConnectionID(1))
        XCTAssertEqual(text(sockets), "", "nothing leaves before the backup acknowledges")
        XCTAssertEqual(world.heldCount, 3)

        try world.acknowledge(below: 11)  // position 10: "one " only
        _ = world.accept(listener: ListenerID(0))  // any host call delivers what was released
        XCTAssertEqual(text(sockets), "one ")
        XCTAssertFalse(sockets.events.contains("close 1"), "the close waits behind the bytes before it")

        try world.acknowledge(below: 12)
        _ = world.accept(listener: ListenerID(0))
        XCTAssertEqual(text(sockets), "one two")
        XCTAssertEqual(sockets.events.last, "close 1")
        XCTAssertEqual(world.bufferedBytes, 0)
    }

    func testAcknowledgementGoingBackwardsIsRefused() throws {
        let world = OutputHoldingWorld(holding: SocketsWorld())
        world.protect(acknowledgedBelow: 0)
        try world.acknowledge(below: 5)
        XCTAssertThrowsError(try world.acknowledge(below: 4))
    }

    func testLosingTheBackupReleasesEverythingHeld() {
        let sockets = SocketsWorld()
        let world = OutputHoldingWorld(holding: sockets)
        world.positionOfNextOutput = { 100 }
        world.protect(acknowledgedBelow: 0)
        _ = send(world, "held", on: 2)
        world.unprotect()
        _ = world.accept(listener: ListenerID(0))
        XCTAssertEqual(text(sockets, 2), "held")
        XCTAssertEqual(send(world, "+direct", on: 2), .done(7))
        XCTAssertEqual(text(sockets, 2), "held+direct")
    }

    func testReleasedOutputAFullSocketRefusesWaitsAndKeepsItsOrder() throws {
        let sockets = SocketsWorld()
        let world = OutputHoldingWorld(holding: sockets)
        world.positionOfNextOutput = { 0 }
        world.protect(acknowledgedBelow: 0)
        _ = send(world, "abcdef")
        sockets.capacity = 2
        try world.acknowledge(below: 1)
        _ = world.accept(listener: ListenerID(0))
        XCTAssertEqual(text(sockets), "ab")
        sockets.capacity = 0
        world.unprotect()
        // Unprotected now, but the outbox is not empty: new output queues behind it.
        XCTAssertEqual(send(world, "gh"), .done(2))
        XCTAssertEqual(text(sockets), "ab")
        sockets.capacity = Int.max
        // A wait with the outbox backed up polls for writability and writes when it can.
        _ = world.poll([], timeoutNanos: 0)
        XCTAssertEqual(text(sockets), "abcdefgh")
    }

    func testBufferedOutputIsBounded() {
        let world = OutputHoldingWorld(holding: SocketsWorld(), bufferLimit: 10)
        world.positionOfNextOutput = { 0 }
        world.protect(acknowledgedBelow: 0)
        XCTAssertEqual(send(world, "12345678"), .done(8))
        XCTAssertEqual(send(world, "9abc"), .wouldBlock, "past the bound the guest is told to wait, as by a full socket")
    }
}
