import Foundation
import Glibc
import XCTest

/// Checkpoints recorded by one process, restored by another after a SIGKILL.
final class RestoreTests: XCTestCase {
    private func recording() -> URL { Harness.scratch("understudy-recording") }

    /// Waits until the recorder has written a checkpoint after everything written so far.
    private func waitForCheckpoints(in directory: URL, beyond count: Int) throws {
        try Harness.waitUntil("a checkpoint in \(directory.path)") {
            let files = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
            return files.filter({ $0.hasSuffix(".ckpt") }).count > count
        }
    }

    /// A recording of `guest` with at least one checkpoint, its process killed.
    private func killedRecording(of guest: String) throws -> URL {
        let directory = recording()
        let original = try ServedGuest(guest, options: ["--record", directory.path, "--checkpoint-every", "50ms"])
        try waitForCheckpoints(in: directory, beyond: 1)
        original.stop()
        return directory
    }

    /// `understudy restore kv` from `directory`, expected to fail.
    private func failedRestore(from directory: URL) throws -> Harness.Outcome {
        let outcome = try Harness.understudy(
            ["restore", try Harness.guest("kv"), "--from", directory.path, "--listen", "127.0.0.1:\(Harness.freePort())"])
        XCTAssertEqual(outcome.status, 1)
        return outcome
    }

    func testRestoredMachineServesTheKeysWrittenBeforeItsCheckpoint() throws {
        let directory = recording()
        let original = try ServedGuest("kv", options: ["--record", directory.path, "--checkpoint-every", "50ms"])
        for index in 0..<30 { XCTAssertEqual(try Harness.redisCLI(original.port, "set", "key:\(index)", "value-\(index)"), "OK") }
        XCTAssertEqual(try Harness.redisCLI(original.port, "incrby", "n", "41"), "41")
        let written = try FileManager.default.contentsOfDirectory(atPath: directory.path).count
        try waitForCheckpoints(in: directory, beyond: written + 1)
        original.stop()  // SIGKILL: no chance to flush anything

        let restored = try ServedGuest(
            "kv", options: ["--from", directory.path], subcommand: "restore", guestArguments: nil)
        XCTAssertEqual(try Harness.redisCLI(restored.port, "get", "key:0"), "value-0")
        XCTAssertEqual(try Harness.redisCLI(restored.port, "get", "key:29"), "value-29")
        XCTAssertEqual(try Harness.redisCLI(restored.port, "incr", "n"), "42")
        XCTAssertEqual(try Harness.redisCLI(restored.port, "dbsize"), "31")
        XCTAssertTrue(restored.output.contains("restoring"), restored.output)
    }

    func testCorruptCheckpointIsRefusedWithItsReason() throws {
        let directory = try killedRecording(of: "kv")
        let first = directory.appendingPathComponent("checkpoint-000001.ckpt")
        var bytes = Array(try Data(contentsOf: first))
        bytes[bytes.count / 2] ^= 0x5a
        try Data(bytes).write(to: first)
        let outcome = try failedRestore(from: directory)
        XCTAssertTrue(outcome.stderr.hasPrefix("understudy: checkpoint record"), outcome.stderr)
        XCTAssertTrue(outcome.stderr.contains("fails its checksum"), outcome.stderr)
    }

    func testCheckpointOfAnotherModuleIsRefused() throws {
        let outcome = try failedRestore(from: try killedRecording(of: "echo"))
        XCTAssertTrue(outcome.stderr.contains("belongs to module"), outcome.stderr)
    }
}
