import Foundation
import Glibc
import XCTest

/// Recordings made by real processes under real clients, killed with SIGKILL, then replayed and
/// verified by another `understudy` process (DESIGN.md invariant 1).
final class ReplayTests: XCTestCase {
    private func recording() -> URL {
        FileManager.default.temporaryDirectory.appendingPathComponent("understudy-replay-\(UUID().uuidString)")
    }

    private func checkpointCount(_ directory: URL) -> Int {
        ((try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []).filter { $0.hasSuffix(".ckpt") }.count
    }

    /// Waits for `more` checkpoints beyond those there now: every entry logged before this
    /// call is then covered by one.
    private func waitForCheckpoints(_ directory: URL, more: Int = 2) {
        let target = checkpointCount(directory) + more
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline && checkpointCount(directory) < target { usleep(20_000) }
        XCTAssertGreaterThanOrEqual(checkpointCount(directory), target, "checkpoints stopped appearing in \(directory.path)")
    }

    private func replay(_ directory: URL, _ options: [String] = ["--verify"]) throws -> Harness.Outcome {
        try Harness.run(Harness.binary, ["replay", directory.path] + options, environment: ["UNDERSTUDY_CACHE": Harness.cache])
    }

    /// Records `guest` while `drive` talks to it, kills it, and requires `replay --verify` to pass,
    /// having verified at least one checkpoint and `minimumOutput` bytes of output.
    @discardableResult
    private func recordDriveAndVerify(
        _ guest: String, options: [String] = [], guestArguments: [String] = [], minimumOutput: Int,
        drive: (UInt16) throws -> Void
    ) throws -> URL {
        let directory = recording()
        let served = try ServedGuest(
            guest, options: ["--record", directory.path, "--checkpoint-every", "50ms"] + options, guestArguments: guestArguments)
        waitForCheckpoints(directory, more: 1)
        try drive(served.port)
        waitForCheckpoints(directory)
        served.stop()

        let outcome = try replay(directory)
        XCTAssertEqual(outcome.status, 0, "\(guest): \(outcome.stderr)")
        let verified = Int(outcome.stdout.firstMatch(of: /checkpoints verified: (\d+)/)?.1 ?? "") ?? 0
        let output = Int(outcome.stdout.firstMatch(of: /outputs match: (\d+) bytes/)?.1 ?? "") ?? 0
        XCTAssertGreaterThanOrEqual(verified, 2, "\(guest): \(outcome.stdout)")
        XCTAssertGreaterThanOrEqual(output, minimumOutput, "\(guest): \(outcome.stdout)")
        return directory
    }

    func testKVUnderRedisBenchmarkReplaysAndVerifies() throws {
        let directory = try recordDriveAndVerify("kv", minimumOutput: 4 * 3000 * 4) { port in
            let outcome = try Harness.run(
                "redis-benchmark", ["-p", "\(port)", "-t", "set,get,incr,lpush", "-n", "3000", "-c", "20", "-r", "500", "-q"])
            XCTAssertEqual(outcome.status, 0, outcome.stderr)
        }
        // From a later checkpoint: fewer checkpoints left to verify, and still no divergence.
        let outcome = try replay(directory, ["--verify", "--from-checkpoint", "3"])
        XCTAssertEqual(outcome.status, 0, outcome.stderr)
        XCTAssertTrue(outcome.stdout.contains("from checkpoint 3"), outcome.stdout)
    }

    func testKVSuspendedAtEveryBlockReplaysAndVerifies() throws {
        try recordDriveAndVerify("kv", options: ["--suspend-at-every-block"], minimumOutput: 2 * 2000 * 4) { port in
            let outcome = try Harness.run("redis-benchmark", ["-p", "\(port)", "-t", "set,incr", "-n", "2000", "-c", "8", "-P", "4", "-q"])
            XCTAssertEqual(outcome.status, 0, outcome.stderr)
        }
    }

    func testBankWithConcurrentClientsReplaysAndVerifies() throws {
        try recordDriveAndVerify("bank", minimumOutput: 4 * 150 * 5) { port in
            DispatchQueue.concurrentPerform(iterations: 4) { client in
                guard let connection = try? LineClient(port: port) else { return XCTFail("client \(client) could not connect") }
                for index in 0..<150 {
                    let reply = try? connection.request("TRANSFER \((client * 7 + index) % 100) \((index * 13) % 100) \(index % 50 + 1)")
                    XCTAssertNotNil(reply)
                }
            }
        }
    }

    func testEveryOtherGuestReplaysAndVerifies() throws {
        try recordDriveAndVerify("echo", minimumOutput: 3 * 200 * 10) { port in
            DispatchQueue.concurrentPerform(iterations: 3) { client in
                guard let connection = try? LineClient(port: port) else { return XCTFail("client \(client) could not connect") }
                for index in 0..<200 { XCTAssertEqual(try? connection.request("line \(client) \(index)"), "line \(client) \(index)") }
            }
        }
        try recordDriveAndVerify("clocky", minimumOutput: 100 * 10) { port in
            let connection = try LineClient(port: port)
            for index in 0..<100 { _ = try connection.request("tick \(index)") }
        }
        try recordDriveAndVerify("http", minimumOutput: 1000 * 50) { port in
            let outcome = try Harness.run("wrk", ["-t1", "-c8", "-d1s", "http://127.0.0.1:\(port)/"])
            XCTAssertEqual(outcome.status, 0, outcome.stderr)
        }
        try recordDriveAndVerify("dirty", guestArguments: ["2000", "4"], minimumOutput: 10) { port in
            let connection = try LineClient(port: port)
            XCTAssertTrue(try connection.request("STATUS").hasPrefix("STATUS"))
            usleep(300_000)
            XCTAssertTrue(try connection.request("STATUS").hasPrefix("STATUS"))
        }
    }

    /// Guests without a listener run to their exit; the replay ends with the same exit and the
    /// same console output. `cpu` makes no host call until it prints its result, so its only
    /// checkpoint is there; `pagetouch` suspends after every round.
    func testGuestsThatRunToTheirExitReplayToIt() throws {
        for (guest, arguments, minimumVerified) in [("pagetouch", ["4", "50", "3000"], 5), ("cpu", ["1"], 0)] {
            let directory = recording()
            let run = try Harness.run(
                Harness.binary, ["run", try Harness.guest(guest), "--record", directory.path, "--checkpoint-every", "1ms", "--"] + arguments,
                environment: ["UNDERSTUDY_CACHE": Harness.cache])
            XCTAssertEqual(run.status, 0, "\(guest): \(run.stderr)")
            XCTAssertGreaterThan(checkpointCount(directory), 0, "\(guest) was never suspended")
            let outcome = try replay(directory)
            XCTAssertEqual(outcome.status, 0, "\(guest): \(outcome.stderr)")
            XCTAssertTrue(outcome.stdout.contains("the guest exited with 0"), "\(guest): \(outcome.stdout)")
            let verified = Int(outcome.stdout.firstMatch(of: /checkpoints verified: (\d+)/)?.1 ?? "") ?? -1
            let output = Int(outcome.stdout.firstMatch(of: /outputs match: (\d+) bytes/)?.1 ?? "") ?? 0
            XCTAssertGreaterThanOrEqual(verified, minimumVerified, "\(guest): \(outcome.stdout)")
            XCTAssertEqual(output, run.stdout.utf8.count, "\(guest): the replay checked every byte it printed")
        }
    }

    /// A restored machine records afresh (`restore --record`), and that recording replays too.
    func testRestoredMachineRecordsAReplayableRecording() throws {
        let first = try recordDriveAndVerify("kv", minimumOutput: 50 * 5) { port in
            for index in 0..<50 {
                XCTAssertEqual(try Harness.run("redis-cli", ["-p", "\(port)", "set", "k\(index)", "v\(index)"]).status, 0)
            }
        }
        let second = recording()
        let restored = try ServedGuest(
            "kv", options: ["--from", first.path, "--record", second.path, "--checkpoint-every", "50ms"], subcommand: "restore",
            guestArguments: nil)
        waitForCheckpoints(second, more: 1)
        let outcome = try Harness.run("redis-cli", ["-p", "\(restored.port)", "get", "k49"])
        XCTAssertEqual(outcome.stdout.trimmingCharacters(in: .whitespacesAndNewlines), "v49")
        XCTAssertEqual(try Harness.run("redis-benchmark", ["-p", "\(restored.port)", "-t", "incr", "-n", "2000", "-q"]).status, 0)
        waitForCheckpoints(second)
        restored.stop()
        let replayed = try replay(second)
        XCTAssertEqual(replayed.status, 0, replayed.stderr)
        XCTAssertTrue(replayed.stdout.contains("checkpoints verified"), replayed.stdout)
    }

    func testDamagedEventLogIsRefusedWithItsReason() throws {
        let directory = try recordDriveAndVerify("echo", minimumOutput: 100) { port in
            let connection = try LineClient(port: port)
            for index in 0..<50 { _ = try connection.request("line \(index)") }
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
