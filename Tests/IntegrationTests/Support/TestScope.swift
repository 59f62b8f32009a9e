import Foundation
import Glibc
import UnderstudyCore
import XCTest

/// What the running test owns: the processes it started and the files it made. When the test
/// ends, pass or fail, every process still running is killed and every file removed; processes
/// die with the test runner too (`ChildProcess` starts them with a parent-death signal).
final class TestScope: @unchecked Sendable {
    static let current = TestScope()

    /// This run's temporary files, one directory removed whole when the run ends.
    static let runDirectory: URL = {
        // A runner that crashed could not remove its own: whoever runs next does.
        let temporary = FileManager.default.temporaryDirectory
        for name in (try? FileManager.default.contentsOfDirectory(atPath: temporary.path)) ?? [] where name.hasPrefix("understudy-tests-") {
            guard let pid = Int32(name.dropFirst("understudy-tests-".count)), kill(pid, 0) != 0, errno == ESRCH else { continue }
            try? FileManager.default.removeItem(at: temporary.appendingPathComponent(name))
        }
        let url = temporary.appendingPathComponent("understudy-tests-\(getpid())")
        try? FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }()

    private let lock = NSLock()
    private var processes: [ChildProcess] = []
    private var files: [URL] = []
    private var undos: [() -> Void] = []
    private var runUndos: [() -> Void] = []
    private var observing = false

    func own(_ process: ChildProcess) {
        observe()
        lock.withLock { processes.append(process) }
    }

    func own(_ file: URL) {
        observe()
        lock.withLock { files.append(file) }
    }

    /// `undo` runs when the test ends (after its processes are killed): a cut link healed.
    func atEnd(_ undo: @escaping () -> Void) {
        observe()
        lock.withLock { undos.append(undo) }
    }

    /// `undo` runs once, when the whole run ends: the hosts' namespaces removed.
    func atRunEnd(_ undo: @escaping () -> Void) {
        observe()
        lock.withLock { runUndos.append(undo) }
    }

    func endRun() {
        end()
        lock.withLock {
            defer { runUndos = [] }
            return runUndos
        }.forEach { $0() }
    }

    func disown(_ process: ChildProcess) {
        lock.withLock { processes.removeAll { $0 === process } }
    }

    /// Kills what the test left running and removes what it left behind. A failed test first
    /// prints the end of every process's output: a failure in CI is read from that alone.
    func end(failed: Bool = false) {
        let (running, made, undone) = lock.withLock {
            defer {
                processes = []
                files = []
                undos = []
            }
            return (processes, files, undos)
        }
        let before = running.map { $0.terminationStatus.map { "exited \($0)" } ?? "running until the test ended" }
        running.forEach { $0.kill() }
        if failed { zip(running, before).forEach { print($0.summary(ended: $1)) } }
        running.forEach { $0.discard() }
        made.forEach { try? FileManager.default.removeItem(at: $0) }
        undone.reversed().forEach { $0() }
    }

    private func observe() {
        // The observer center belongs to the main thread, which runs the tests; a first use from
        // another thread leaves registering to the next use on the main one (before the test ends).
        guard Thread.isMainThread else { return }
        let first = lock.withLock {
            defer { observing = true }
            return !observing
        }
        guard first else { return }
        let observer = ScopeObserver(scope: self)
        MainActor.assumeIsolated { XCTestObservationCenter.shared.addTestObserver(observer) }
    }
}

private final class ScopeObserver: NSObject, XCTestObservation, @unchecked Sendable {
    let scope: TestScope
    init(scope: TestScope) { self.scope = scope }

    func testCaseDidFinish(_ testCase: XCTestCase) { scope.end(failed: testCase.testRun.map { !$0.hasSucceeded } ?? false) }

    func testBundleDidFinish(_ testBundle: Bundle) {
        scope.endRun()
        try? FileManager.default.removeItem(at: TestScope.runDirectory)
    }
}

/// A program the harness started: stdout (and stderr, merged or apart) in files, every wait
/// bounded, killed and its files removed when the test that started it ends.
final class ChildProcess {
    let process: SpawnedProcess
    let name: String
    private let arguments: [String]
    private let outputFile: URL
    private let errorFile: URL?

    /// `program` is a path or a name looked up on PATH.
    init(
        _ program: String, _ arguments: [String], environment: [String: String] = [:], stdin: URL? = nil,
        separateStderr: Bool = false
    ) throws {
        name = URL(fileURLWithPath: program).lastPathComponent
        self.arguments = arguments
        outputFile = TestScope.runDirectory.appendingPathComponent("\(name)-\(UUID().uuidString).out")
        errorFile = separateStderr ? TestScope.runDirectory.appendingPathComponent("\(name)-\(UUID().uuidString).err") : nil
        for file in [outputFile, errorFile].compactMap({ $0 }) { _ = FileManager.default.createFile(atPath: file.path, contents: nil) }
        // The parent-death signal is tied to the thread that starts the child: only the main
        // thread, which runs the tests, lives as long as the runner.
        let command = Thread.isMainThread ? ["/usr/bin/setpriv", "--pdeathsig", "KILL", "--", program] : [program]
        process = try SpawnedProcess(
            command[0], Array(command.dropFirst()) + arguments, adding: environment,
            stdin: stdin.map { .file($0.path) } ?? .null, stdout: .file(outputFile.path),
            stderr: errorFile.map { .file($0.path) } ?? .standardOutput)
        TestScope.current.own(self)
    }

    var pid: Int32 { process.pid }
    var isRunning: Bool { process.isRunning }
    /// Its exit code (or the signal that ended it); nil while it runs.
    var terminationStatus: Int32? { process.terminationStatus }
    var output: String { (try? String(contentsOf: outputFile, encoding: .utf8)) ?? "" }
    var errorOutput: String { errorFile.flatMap { try? String(contentsOf: $0, encoding: .utf8) } ?? "" }

    /// SIGKILL, then reap it (a killed process exits at once; the wait is bounded regardless).
    func kill() {
        guard process.isRunning else { return }
        Glibc.kill(pid, SIGKILL)
        _ = try? waitForExit(seconds: 10)
    }

    /// Its exit status; one still running after `seconds` is killed and reported.
    @discardableResult
    func waitForExit(seconds: Double) throws -> Int32 {
        let deadline = Date().addingTimeInterval(seconds)
        while true {
            if let status = process.terminationStatus { return status }
            guard Date() < deadline else {
                Glibc.kill(pid, SIGKILL)
                throw HarnessError.timedOut(
                    "\(name) \(arguments.suffix(6).joined(separator: " ")) did not exit within \(Int(seconds)) s; killed. Output:\n\(output.suffix(2000))\(errorOutput.suffix(2000))")
            }
            usleep(2_000)
        }
    }

    /// Waits until the output contains `text` `times` times; fails with the output otherwise.
    func waitFor(_ text: String, times: Int = 1, seconds: Double = 60) throws {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if output.components(separatedBy: text).count - 1 >= times { return }
            if !process.isRunning { break }
            usleep(10_000)
        }
        throw HarnessError.timedOut("\(name) never said '\(text)' (\(times)×):\n\(output)")
    }

    /// Who it was, how it ended and the end of what it said.
    func summary(ended: String) -> String {
        "--- \(name) \(arguments.prefix(12).joined(separator: " ")) (\(ended)); the end of its output:\n\(output.suffix(6000))\(errorOutput.suffix(2000))\n---"
    }

    /// Removes its files now (it must have exited) instead of at the end of the test.
    func discard() {
        TestScope.current.disown(self)
        for file in [outputFile, errorFile].compactMap({ $0 }) { try? FileManager.default.removeItem(at: file) }
    }
}
