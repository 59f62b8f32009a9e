import UnderstudyCore
import XCTest

@testable import UnderstudyEventLog

final class EventLogCodecTests: XCTestCase {
    private let moduleHash = String(repeating: "ab", count: 32)

    /// One of every kind of entry, with every result shape.
    private let entries: [EventLogEntry] = [
        .clock(.monotonic, 123_456_789), .clock(.realtime, .max), .random([1, 2, 3, 255]), .random([]),
        .accept(ListenerID(0), .done(ConnectionID(77))), .accept(ListenerID(1), .wouldBlock),
        .accept(ListenerID(0), .failed(errno: 24)), .receive(ConnectionID(77), .done(Array("GET k\r\n".utf8))),
        .receive(ConnectionID(77), .done([])), .receive(ConnectionID(5), .wouldBlock), .receive(ConnectionID(5), .failed(errno: 104)),
        .send(ConnectionID(77), offered: 5, digest: 0xDEAD_BEEF, result: .done(3)),
        .send(ConnectionID(77), offered: 5, digest: 1, result: .failed(errno: 32)),
        .shutdown(ConnectionID(77), reading: false, writing: true), .closeConnection(ConnectionID(77)), .closeListener(ListenerID(2)),
        .poll(interests: 3, .ready([.init(interest: 0, readable: true, writable: false, hangup: false), .init(interest: 2, readable: false, writable: true, hangup: true)])),
        .poll(interests: 1, .timedOut), .poll(interests: 4, .failed(errno: 12)), .console(.stderr, length: 9, digest: 42), .suspended(hostCalls: 0), .suspended(hostCalls: 7),
    ]

    private func encoded(_ entries: [EventLogEntry]) -> [UInt8] {
        var writer = ByteWriter()
        writer.raw(EventLogCodec.header(moduleHash: moduleHash))
        for (index, entry) in entries.enumerated() { EventLogCodec.append(entry, sequence: UInt64(index), to: &writer) }
        return writer.bytes
    }

    func testEveryEntryKindRoundTrips() throws {
        let log = try EventLogCodec.decode(encoded(entries))
        XCTAssertEqual(log, EventLog(moduleHash: moduleHash, entries: entries))
    }

    func testRecordingWorldLogsInBatchesThatDecodeToTheSameEntries() throws {
        let sink = EventLogBuffer(moduleHash: moduleHash)
        let world = RecordingWorld(recording: FixedWorld(), to: sink, batchBytes: 40)
        for _ in 0..<10 { _ = world.clockNow(.monotonic) }
        XCTAssertGreaterThan(sink.bytes.count, EventLogCodec.header(moduleHash: moduleHash).count, "a full batch goes out unasked")
        _ = world.hostCallEntered()
        _ = world.hostCallEntered()
        world.guestWillSuspend()
        try world.flush()
        let log = try EventLogCodec.decode(sink.bytes)
        XCTAssertEqual(log.entries, Array(repeating: .clock(.monotonic, 99), count: 10) + [.suspended(hostCalls: 2)])
        XCTAssertEqual(world.position, 11)
    }

    func testEveryFlippedByteIsRefused() {
        let bytes = encoded(entries)
        var random = SystemRandomNumberGenerator()
        for _ in 0..<400 {
            var damaged = bytes
            let offset = Int.random(in: 0..<bytes.count, using: &random)
            damaged[offset] ^= UInt8.random(in: 1...255, using: &random)
            XCTAssertThrowsError(try EventLogCodec.decode(damaged), "a flip at byte \(offset) went unnoticed")
        }
    }

    /// The log is a stream without an end record: a cut between two records reads as the shorter
    /// log it then is (replay refuses it if a checkpoint points past its end). Any other cut is
    /// refused.
    func testACutInsideARecordIsRefusedAndACutBetweenRecordsIsAPrefix() throws {
        let bytes = encoded(entries)
        var boundaries: [Int: Int] = [:]  // byte length -> entries before it
        for count in 0...entries.count { boundaries[encoded(Array(entries[..<count])).count] = count }
        for length in 0..<bytes.count {
            let cut = Array(bytes[..<length])
            if let count = boundaries[length] {
                XCTAssertEqual(try EventLogCodec.decode(cut).entries, Array(entries[..<count]))
                continue
            }
            XCTAssertThrowsError(try EventLogCodec.decode(cut), "a cut at byte \(length) went unnoticed") { error in
                let message = "\(error)"
                XCTAssertTrue(message.contains("truncated") || message.contains("not an understudy event log"), message)
            }
        }
    }

    func testWrongVersionAndOrderAreRefusedByName() throws {
        var bytes = encoded(entries)
        bytes[8] = 9  // the version's low byte
        XCTAssertThrowsError(try EventLogCodec.decode(bytes)) { error in
            XCTAssertEqual(error as? EventLogError, .unsupportedVersion(9))
        }
        var records = ByteWriter()
        EventLogCodec.append(.suspended(hostCalls: 1), sequence: 4, to: &records)
        XCTAssertThrowsError(try EventLogCodec.decodeRecords(records.bytes[...], first: 5)) { error in
            XCTAssertEqual(error as? EventLogError, .outOfSequence(expected: 5, found: 4, offset: 0))
        }
        XCTAssertEqual(try EventLogCodec.decodeRecords(records.bytes[...], first: 4), [.suspended(hostCalls: 1)])
    }

    func testReplayWorldAnswersFromTheLogAndNamesADivergence() {
        let world = ReplayWorld(entries: [.clock(.monotonic, 5), .random([9, 8]), .console(.stdout, length: 2, digest: OutputDigest.of(UnsafeRawBufferPointer(start: nil, count: 0)))], startingAt: 0)
        XCTAssertEqual(world.clockNow(.monotonic), 5)
        var buffer = [UInt8](repeating: 0, count: 2)
        buffer.withUnsafeMutableBytes { world.randomBytes(into: $0) }
        XCTAssertEqual(buffer, [9, 8])
        XCTAssertNil(world.haltReason)
        Array("hi".utf8).withUnsafeBytes { world.console(.stdout, bytes: $0) }
        XCTAssertEqual(world.divergence, "divergence at log position 2: the guest asked for console output of 2 bytes, the recording has console output")
        XCTAssertNotNil(world.haltReason)
    }

    func testReplayWorldHaltsAtTheEndOfTheLog() {
        // Recorded: a call that asked the world nothing, then a suspension at the next call.
        let world = ReplayWorld(entries: [.suspended(hostCalls: 2)], startingAt: 0)
        XCTAssertFalse(world.hostCallEntered(), "the first call is not where the recording suspended")
        XCTAssertTrue(world.hostCallEntered())
        world.guestWillSuspend()
        XCTAssertFalse(world.hostCallEntered())
        XCTAssertNil(world.haltReason)
        _ = world.clockNow(.realtime)
        XCTAssertTrue(world.reachedEnd)
        XCTAssertEqual(world.haltReason, "the event log ends at position 1")
    }
}

/// A world that answers every question the same way.
private final class FixedWorld: MachineWorld {
    func clockNow(_ clock: WorldClock) -> UInt64 { 99 }
    func randomBytes(into buffer: UnsafeMutableRawBufferPointer) { buffer.initializeMemory(as: UInt8.self, repeating: 1) }
    func accept(listener: ListenerID) -> WorldResult<ConnectionID> { .wouldBlock }
    func receive(connection: ConnectionID, into buffer: UnsafeMutableRawBufferPointer) -> WorldResult<Int> { .wouldBlock }
    func send(connection: ConnectionID, bytes: UnsafeRawBufferPointer) -> WorldResult<Int> { .done(bytes.count) }
    func shutdown(connection: ConnectionID, reading: Bool, writing: Bool) {}
    func close(connection: ConnectionID) {}
    func close(listener: ListenerID) {}
    func poll(_ interests: [PollInterest], timeoutNanos: UInt64?) -> PollOutcome { .timedOut }
    func console(_ stream: ConsoleStream, bytes: UnsafeRawBufferPointer) {}
}
