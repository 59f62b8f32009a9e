import Foundation
import Glibc
import XCTest

@testable import UnderstudyCore

final class SpawnedProcessTests: XCTestCase {
    private var scratch: URL!

    override func setUpWithError() throws {
        scratch = FileManager.default.temporaryDirectory.appendingPathComponent("spawned-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: scratch) }

    private func run(_ script: String, stdin: SpawnedProcess.Stream = .null, environment: [String: String] = [:]) throws -> (status: Int32, output: String) {
        let output = scratch.appendingPathComponent("out").path
        try? FileManager.default.removeItem(atPath: output)
        let process = try SpawnedProcess("sh", ["-c", script], adding: environment, stdin: stdin, stdout: .file(output), stderr: .standardOutput)
        let status = process.waitUntilExit()
        XCTAssertFalse(process.isRunning)
        XCTAssertEqual(process.terminationStatus, status)
        return (status, (try? String(contentsOfFile: output, encoding: .utf8)) ?? "")
    }

    func testExitCodeOutputAndMergedErrors() throws {
        let (status, output) = try run("echo out; echo err >&2; exit 7")
        XCTAssertEqual(status, 7)
        XCTAssertEqual(output, "out\nerr\n")
    }

    func testTheSignalThatEndedItIsItsStatus() throws {
        XCTAssertEqual(try run("kill -TERM $$").status, SIGTERM)
    }

    func testEnvironmentAdditionsAndStdinFile() throws {
        let input = scratch.appendingPathComponent("in")
        try Data("from a file\n".utf8).write(to: input)
        let (_, output) = try run("echo \"$UNDERSTUDY_SPAWN_TEST\"; cat", stdin: .file(input.path), environment: ["UNDERSTUDY_SPAWN_TEST": "added"])
        XCTAssertEqual(output, "added\nfrom a file\n")
    }

    /// A descriptor the parent left open without close-on-exec, and a signal it ignores, do
    /// not reach the child.
    func testTheChildInheritsNoDescriptorAndNoIgnoredSignal() throws {
        var ends: [Int32] = [-1, -1]
        XCTAssertEqual(pipe(&ends), 0)
        // Far above what `ls` opens for itself (3, 4), which would look inherited.
        ends = ends.map { end in
            defer { close(end) }
            return fcntl(end, F_DUPFD, 300)
        }
        defer { close(ends[0]); close(ends[1]) }
        let previous = signal(SIGUSR2, SIG_IGN)
        defer { signal(SIGUSR2, previous) }
        let (_, output) = try run("ls /proc/self/fd; grep SigIgn /proc/self/status")
        let descriptors = output.split(separator: "\n").compactMap { Int32($0) }
        XCTAssertFalse(descriptors.contains(ends[0]), "inherited the pipe: \(output)")
        XCTAssertFalse(descriptors.contains(ends[1]), "inherited the pipe: \(output)")
        let ignored = output.split(separator: "\n").first { $0.hasPrefix("SigIgn:") }
            .flatMap { UInt64($0.dropFirst("SigIgn:".count).trimmingCharacters(in: .whitespaces), radix: 16) }
        XCTAssertEqual(try XCTUnwrap(ignored, output) & (1 << (SIGUSR2 - 1) | 1 << (SIGPIPE - 1)), 0, output)
    }

    func testAProgramThatIsNotThereIsAnError() throws {
        XCTAssertThrowsError(try SpawnedProcess("/nonexistent/understudy-nothing", [])) { error in
            XCTAssertTrue("\(error)".contains("cannot start /nonexistent/understudy-nothing"), "\(error)")
        }
    }

    func testARunningChildIsRunningUntilSignalled() throws {
        let process = try SpawnedProcess("sleep", ["30"])
        XCTAssertTrue(process.isRunning)
        XCTAssertNil(process.terminationStatus)
        process.signal(SIGKILL)
        XCTAssertEqual(process.waitUntilExit(), SIGKILL)
        XCTAssertFalse(process.isRunning)
    }
}
