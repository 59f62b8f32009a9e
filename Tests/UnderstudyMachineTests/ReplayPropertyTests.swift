import UnderstudyCheckpoint
import UnderstudyCore
import UnderstudyEventLog
import XCTest

@testable import UnderstudyMachine

/// DESIGN.md invariant 1, as a property: for many seeds, record a guest under random traffic with
/// suspensions at random host calls, restore a random one of its states in a fresh machine,
/// replay the log from there, and require the same state at every later suspension and the same
/// outputs (the replay world checks each against its digest).
final class ReplayPropertyTests: XCTestCase {
    private static let seedsPerGuest = Int(ProcessInfo.processInfo.environment["UNDERSTUDY_REPLAY_SEEDS"] ?? "") ?? 100

    func testKVReplaysIdenticallyOverManySeeds() throws {
        try checkSeeds(guest: "kv") { random in
            let key = "k\(Int.random(in: 0..<12, using: &random))"
            switch Int.random(in: 0..<4, using: &random) {
            case 0: return Self.resp(["SET", key, String(repeating: "v", count: Int.random(in: 1..<300, using: &random))])
            case 1: return Self.resp(["GET", key])
            case 2: return Self.resp(["INCR", "n\(Int.random(in: 0..<3, using: &random))"])
            default: return Self.resp(["DEL", key])
            }
        }
    }

    func testBankReplaysIdenticallyOverManySeeds() throws {
        try checkSeeds(guest: "bank") { random in
            switch Int.random(in: 0..<5, using: &random) {
            case 0: return Array("BALANCE \(Int.random(in: 0..<120, using: &random))\n".utf8)
            case 1: return Array("AUDIT\n".utf8)
            default:
                let (from, to) = (Int.random(in: 0..<100, using: &random), Int.random(in: 0..<100, using: &random))
                return Array("TRANSFER \(from) \(to) \(Int.random(in: 1..<700, using: &random))\n".utf8)
            }
        }
    }

    /// clocky folds both clocks and 16 random bytes into its state on every line and every idle
    /// tick: the guest that fails first if any reading escapes the log.
    func testClockAndEntropyGuestReplaysIdenticallyOverManySeeds() throws {
        try checkSeeds(guest: "clocky") { random in Array("line \(UInt32.random(in: 0...UInt32.max, using: &random))\n".utf8) }
    }

    /// pagetouch writes pages between a clock reading and `sched_yield`, a host call that asks
    /// the world nothing: a suspension there must be replayed at that call, not at the one
    /// before it. It exits by itself; the replay must reach the same exit.
    func testComputeGuestSuspendedBetweenWorldCallsReplaysIdentically() throws {
        try checkSeeds(guest: "pagetouch", arguments: ["1", "20", "60"]) { _ in [] }
    }

    func testReplayNamesTheFirstDivergentPage() throws {
        let prepared = try Fixtures.guest("kv")
        let runs = try (1...20 as ClosedRange<UInt64>).lazy.map { seed in
            try self.record(guest: "kv", prepared: prepared, seed: seed) { _ in Self.resp(["SET", "key", "value"]) }
        }
        guard let run = runs.first(where: { $0.states.count >= 2 }) else { return XCTFail("no seed suspended twice") }
        var damaged = run.states[0].state
        damaged.memory[damaged.memory.count - 5] ^= 0x40
        let outcome = try replay(run, from: 0, restoring: damaged)
        let expectedPage = (damaged.memory.count - 5) / 4096
        XCTAssertEqual(outcome.firstDifference?.hasPrefix("memory page \(expectedPage) "), true, "\(outcome)")
    }

    func testReplayDetectsAnAlteredInput() throws {
        let run = try record(guest: "kv", seed: 11) { random in
            Self.resp(["SET", "key\(Int.random(in: 0..<4, using: &random))", "value"]) + Self.resp(["GET", "key1"])
        }
        var entries = run.log.entries
        let start = Int(run.states[0].position)
        guard let index = entries.indices.first(where: { index in
            guard index >= start, case .receive(_, .done(let bytes)) = entries[index] else { return false }
            return bytes.count > 8
        }), case .receive(let connection, .done(var bytes)) = entries[index] else { return XCTFail("no input after the first state") }
        bytes[bytes.count / 2] ^= 0x01
        entries[index] = .receive(connection, .done(bytes))
        let altered = RecordedRun(log: EventLog(moduleHash: run.log.moduleHash, entries: entries), states: run.states, prepared: run.prepared)
        let outcome = try replay(altered, from: 0, restoring: run.states[0].state)
        XCTAssertTrue(outcome.divergence != nil || outcome.firstDifference != nil, "an altered input went unnoticed: \(outcome)")
    }

    // MARK: recording and replaying in-process

    private struct RecordedRun {
        var log: EventLog
        var states: [(position: UInt64, state: MachineState)]
        var prepared: PreparedModule
    }

    private struct ReplayOutcome: CustomStringConvertible {
        var verified = 0
        var divergence: String?
        var firstDifference: String?
        var reachedEnd = false
        var description: String {
            "verified \(verified), divergence \(divergence ?? "none"), difference \(firstDifference ?? "none"), end \(reachedEnd)"
        }
    }

    private static func resp(_ words: [String]) -> [UInt8] {
        var text = "*\(words.count)\r\n"
        for word in words { text += "$\(word.utf8.count)\r\n\(word)\r\n" }
        return Array(text.utf8)
    }

    private func checkSeeds(guest: String, arguments: [String] = [], request: (inout SeededGenerator) -> [UInt8]) throws {
        var verifiedTotal = 0
        let prepared = try Fixtures.guest(guest)
        for seed in 1...UInt64(Self.seedsPerGuest) {
            let run = try record(guest: guest, prepared: prepared, arguments: arguments, seed: seed, request: request)
            guard run.states.count >= 2 else { continue }
            var choose = SeededGenerator(seed: seed ^ 0xA5A5)
            let start = Int.random(in: 0..<run.states.count - 1, using: &choose)
            let outcome = try replay(run, from: start, restoring: run.states[start].state)
            XCTAssertNil(outcome.divergence, "seed \(seed): \(outcome)")
            XCTAssertNil(outcome.firstDifference, "seed \(seed): \(outcome)")
            XCTAssertTrue(outcome.reachedEnd, "seed \(seed): the replay stopped before the end of the log: \(outcome)")
            XCTAssertEqual(outcome.verified, run.states.count - start - 1, "seed \(seed): \(outcome)")
            verifiedTotal += outcome.verified
            if outcome.divergence != nil || outcome.firstDifference != nil { return }
        }
        // The property must have been exercised, not skipped for want of suspensions.
        XCTAssertGreaterThan(verifiedTotal, Self.seedsPerGuest)
    }

    /// `prepared` once per guest: parsing a module costs more than a whole seeded run.
    private func record(
        guest: String, prepared: PreparedModule? = nil, arguments: [String] = [], seed: UInt64,
        request: (inout SeededGenerator) -> [UInt8]
    ) throws -> RecordedRun {
        let prepared = try prepared ?? Fixtures.guest(guest)
        var random = SeededGenerator(seed: seed)
        let streams = (0..<Int.random(in: 1...4, using: &random)).map { _ in
            (0..<Int.random(in: 4...24, using: &random)).flatMap { _ in request(&random) }
        }
        let suspension = SuspensionRequest()
        let traffic = SeededTrafficWorld(seed: seed, streams: streams, suspension: suspension)
        let sink = EventLogBuffer(moduleHash: prepared.hash)
        let recording = RecordingWorld(recording: traffic, to: sink, batchBytes: Int.random(in: 64...8192, using: &random))
        let machine = try Machine(
            prepared: prepared, world: recording, suspension: suspension,
            configuration: MachineConfiguration(arguments: [guest] + arguments, listenerCount: 1))
        var states: [(position: UInt64, state: MachineState)] = []
        machine.onSuspended = { machine in
            if traffic.finished { throw ScriptedWorld.Finished() }
            states.append((recording.position, try machine.captureState()))
        }
        do {
            // Only a guest without clients (pagetouch) may end by itself.
            let code = try machine.run()
            XCTAssertEqual(code, 0, "seed \(seed): \(guest) failed")
            XCTAssertFalse(streams.contains { !$0.isEmpty }, "seed \(seed): \(guest) exited with clients to serve")
        } catch {
            guard case .suspension(let reason) = error, reason.contains("Finished") else { throw error }
        }
        try recording.flush()
        let log = try EventLogCodec.decode(sink.bytes)
        XCTAssertEqual(UInt64(log.entries.count), recording.position, "seed \(seed): the log lost entries")
        return RecordedRun(log: log, states: states, prepared: prepared)
    }

    /// Replays `run` from its state `start` (or a damaged copy of it) in a fresh machine on the other engine,
    /// comparing each later recorded state when the replay reaches its log position.
    private func replay(_ run: RecordedRun, from start: Int, restoring state: MachineState) throws -> ReplayOutcome {
        let world = ReplayWorld(entries: run.log.entries, startingAt: Int(run.states[start].position))
        // On the other engine: a state is plain values, and both engines compute the same ones.
        let machine = try Machine(
            restoring: state, prepared: run.prepared, world: world, suspension: SuspensionRequest(),
            configuration: MachineConfiguration(arguments: [], listenerCount: 1, engine: Fixtures.otherEngine))
        var outcome = ReplayOutcome()
        var next = start + 1
        struct Stop: Error {}
        machine.onSuspended = { machine in
            guard next < run.states.count, run.states[next].position <= UInt64(world.position) else { return }
            let expected = run.states[next]
            guard expected.position == UInt64(world.position) else {
                outcome.firstDifference = "state at log position \(expected.position) was skipped"
                throw Stop()
            }
            if let difference = try machine.captureState().firstDifference(from: expected.state) {
                outcome.firstDifference = difference
                throw Stop()
            }
            outcome.verified += 1
            next += 1
        }
        do {
            _ = try machine.run()
            // The guest exited as it did when recorded: the whole log must have been used.
            outcome.reachedEnd = world.position == run.log.entries.count
        } catch {
            outcome.reachedEnd = world.reachedEnd
            switch error {
            case .halted: break
            case .suspension(let reason) where reason.contains("Stop"): break
            default: throw error
            }
        }
        outcome.divergence = world.divergence
        return outcome
    }
}
