import Foundation
import Glibc
import XCTest

/// Recordings made by real processes under real clients, killed with SIGKILL, then replayed and
/// verified by another `understudy` process (DESIGN.md invariant 1).
final class ReplayTests: XCTestCase {
    private func recording() -> URL { Harness.scratch("understudy-replay") }

    private func checkpointCount(_ directory: URL) -> Int {
        ((try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []).filter { $0.hasSuffix(".ckpt") }.count
    }

    /// Waits for `more` checkpoints beyond those there now: every entry logged before this
    /// call is then covered by one.
    private func waitForCheckpoints(_ directory: URL, more: Int = 2) throws {
        let target = checkpointCount(directory) + more
        try Harness.waitUntil("\(more) more checkpoints in \(directory.path)") { checkpointCount(directory) >= target }
    }

    private func replay(_ directory: URL, _ options: [String] = ["--verify"]) throws -> Harness.Outcome {
        try Harness.understudy(["replay", directory.path] + options)
    }

    /// A figure of the replay's summary; a summary without it fails the test.
    private func summary(_ outcome: Harness.Outcome, _ pattern: Regex<(Substring, Substring)>, _ what: String) throws -> Int {
        try XCTUnwrap(outcome.stdout.firstMatch(of: pattern).flatMap { Int($0.1) }, "no \(what) in the replay's summary:\n\(outcome.stdout)")
    }

    private func checkpointsVerified(_ outcome: Harness.Outcome) throws -> Int {
        try summary(outcome, /checkpoints verified: (\d+)/, "checkpoints verified")
    }

    private func outputBytesMatched(_ outcome: Harness.Outcome) throws -> Int {
        try summary(outcome, /outputs match: (\d+) bytes/, "outputs matched")
    }

    /// Records `guest` while `drive` talks to it, kills it, and requires `replay --verify` to pass,
    /// having verified at least two checkpoints and at least the output bytes `drive` says its
    /// clients received.
    @discardableResult
    private func recordDriveAndVerify(
        _ guest: String, options: [String] = [], guestArguments: [String] = [], drive: (UInt16) throws -> Int
    ) throws -> URL {
        let directory = recording()
        let served = try ServedGuest(
            guest, options: ["--record", directory.path, "--checkpoint-every", "50ms"] + options, guestArguments: guestArguments)
        try waitForCheckpoints(directory, more: 1)
        let minimumOutput = try drive(served.port)
        try waitForCheckpoints(directory)
        served.stop()

        let outcome = try replay(directory)
        XCTAssertEqual(outcome.status, 0, "\(guest): \(outcome.stderr)")
        XCTAssertGreaterThanOrEqual(try checkpointsVerified(outcome), 2, "\(guest): \(outcome.stdout)")
        XCTAssertGreaterThanOrEqual(try outputBytesMatched(outcome), minimumOutput, "\(guest): \(outcome.stdout)")
        return directory
    }

    func testKVUnderRedisBenchmarkReplaysAndVerifies() throws {
        let directory = try recordDriveAndVerify("kv") { port in
            let outcome = try Harness.run(
                "redis-benchmark", ["-p", "\(port)", "-t", "set,get,incr,lpush", "-n", "3000", "-c", "20", "-r", "500", "-q"])
            XCTAssertEqual(outcome.status, 0, outcome.stderr)
            return 4 * 3000 * 4  // four tests of 3000 replies, each at least 4 bytes ("+OK\r\n", ":1\r\n")
        }
        // From a later checkpoint: fewer checkpoints left to verify, and still no divergence.
        let outcome = try replay(directory, ["--verify", "--from-checkpoint", "3"])
        XCTAssertEqual(outcome.status, 0, outcome.stderr)
        XCTAssertTrue(outcome.stdout.contains("from checkpoint 3"), outcome.stdout)
    }

    func testKVSuspendedAtEveryBlockReplaysAndVerifies() throws {
        try recordDriveAndVerify("kv", options: ["--suspend-at-every-block"]) { port in
            let outcome = try Harness.run("redis-benchmark", ["-p", "\(port)", "-t", "set,incr", "-n", "2000", "-c", "8", "-P", "4", "-q"])
            XCTAssertEqual(outcome.status, 0, outcome.stderr)
            return 2 * 2000 * 4
        }
    }

    func testBankWithConcurrentClientsReplaysAndVerifies() throws {
        try recordDriveAndVerify("bank") { port in
            DispatchQueue.concurrentPerform(iterations: 4) { client in
                guard let connection = try? LineClient(port: port) else { return XCTFail("client \(client) could not connect") }
                for index in 0..<150 {
                    let reply = try? connection.request("TRANSFER \((client * 7 + index) % 100) \((index * 13) % 100) \(index % 50 + 1)")
                    XCTAssertNotNil(reply)
                }
            }
            return 4 * 150 * 5  // "OK n\n" or "ERR …\n"
        }
    }

    func testEveryOtherGuestReplaysAndVerifies() throws {
        try recordDriveAndVerify("echo") { port in
            DispatchQueue.concurrentPerform(iterations: 3) { client in
                guard let connection = try? LineClient(port: port) else { return XCTFail("client \(client) could not connect") }
                for index in 0..<200 { XCTAssertEqual(try? connection.request("line \(client) \(index)"), "line \(client) \(index)") }
            }
            return 3 * 200 * 10
        }
        try recordDriveAndVerify("clocky") { port in
            let connection = try LineClient(port: port)
            for index in 0..<100 { _ = try connection.request("tick \(index)") }
            return 100 * 10
        }
        try recordDriveAndVerify("http") { port in
            // As many requests as wrk managed, each answered with headers and a page.
            let outcome = try Harness.run("wrk", ["-t1", "-c8", "-d1s", "http://127.0.0.1:\(port)/"])
            XCTAssertEqual(outcome.status, 0, outcome.stderr)
            let requests = try XCTUnwrap(outcome.stdout.firstMatch(of: /(\d+) requests in/).flatMap { Int($0.1) }, outcome.stdout)
            XCTAssertGreaterThan(requests, 0, outcome.stdout)
            return requests * 50
        }
        try recordDriveAndVerify("dirty", guestArguments: ["2000", "4"]) { port in
            let connection = try LineClient(port: port)
            XCTAssertTrue(try connection.request("STATUS").hasPrefix("STATUS"))
            usleep(300_000)
            XCTAssertTrue(try connection.request("STATUS").hasPrefix("STATUS"))
            return 2 * 10
        }
    }

    /// Guests without a listener run to their exit; the replay ends with the same exit and the
    /// same console output. `cpu` makes no host call until it prints its result, so its only
    /// checkpoint is there; `pagetouch` suspends after every round.
    func testGuestsThatRunToTheirExitReplayToIt() throws {
        for (guest, arguments, minimumVerified) in [("pagetouch", ["4", "50", "3000"], 5), ("cpu", ["1"], 0)] {
            let directory = recording()
            let run = try Harness.understudy(
                ["run", try Harness.guest(guest), "--record", directory.path, "--checkpoint-every", "1ms", "--"] + arguments)
            XCTAssertEqual(run.status, 0, "\(guest): \(run.stderr)")
            XCTAssertGreaterThan(checkpointCount(directory), 0, "\(guest) was never suspended")
            let outcome = try replay(directory)
            XCTAssertEqual(outcome.status, 0, "\(guest): \(outcome.stderr)")
            XCTAssertTrue(outcome.stdout.contains("the guest exited with 0"), "\(guest): \(outcome.stdout)")
            XCTAssertGreaterThanOrEqual(try checkpointsVerified(outcome), minimumVerified, "\(guest): \(outcome.stdout)")
            XCTAssertEqual(try outputBytesMatched(outcome), run.stdout.utf8.count, "\(guest): the replay checked every byte it printed")
        }
    }

    /// A restored machine records afresh (`restore --record`), and that recording replays too.
    func testRestoredMachineRecordsAReplayableRecording() throws {
        let first = try recordDriveAndVerify("kv") { port in
            for index in 0..<50 { XCTAssertEqual(try Harness.redisCLI(port, ["set", "k\(index)", "v\(index)"]), "OK") }
            return 50 * 5
        }
        let second = recording()
        let restored = try ServedGuest(
            "kv", options: ["--from", first.path, "--record", second.path, "--checkpoint-every", "50ms"], subcommand: "restore",
            guestArguments: nil)
        try waitForCheckpoints(second, more: 1)
        XCTAssertEqual(try Harness.redisCLI(restored.port, ["get", "k49"]), "v49")
        XCTAssertEqual(try Harness.run("redis-benchmark", ["-p", "\(restored.port)", "-t", "incr", "-n", "2000", "-q"]).status, 0)
        try waitForCheckpoints(second)
        restored.stop()
        let replayed = try replay(second)
        XCTAssertEqual(replayed.status, 0, replayed.stderr)
        XCTAssertGreaterThanOrEqual(try checkpointsVerified(replayed), 2, replayed.stdout)
        XCTAssertGreaterThanOrEqual(try outputBytesMatched(replayed), 2000 * 4, replayed.stdout)
    }

    func testDamagedEventLogIsRefusedWithItsReason() throws {
        let directory = try recordDriveAndVerify("echo") { port in
            let connection = try LineClient(port: port)
            for index in 0..<50 { _ = try connection.request("line \(index)") }
            return 50 * 6
        }
        let log = directory.appendingPathComponent("events.log")
        let original = Array(try Data(contentsOf: log))

        var flipped = original
        flipped[original.count * 2 / 3] ^= 0x21
        try Data(flipped).write(to: log)
        var outcome = try replay(directory)
        XCTAssertEqual(outcome.status, 1)
        XCTAssertTrue(outcome.stderr.hasPrefix("understudy: event log entry") || outcome.stderr.contains("malformed event log"), outcome.stderr)
        XCTAssertEqual(outcome.stderr.split(separator: "\n").count, 1, outcome.stderr)

        try Data(original.dropLast(3)).write(to: log)
        outcome = try replay(directory)
        XCTAssertEqual(outcome.status, 1)
        XCTAssertTrue(outcome.stderr.contains("the event log is truncated"), outcome.stderr)

        try Data(original).write(to: log)
        XCTAssertEqual(try replay(directory).status, 0, "the intact log replays again")
    }
}
