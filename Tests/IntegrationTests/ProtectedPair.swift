import Foundation
import Glibc
import XCTest

/// One `understudy` process started for real, its output in a file, killed with SIGKILL.
final class UnderstudyProcess {
    let process = Process()
    let name: String
    private let log: URL

    init(_ name: String, _ arguments: [String]) throws {
        self.name = name
        log = FileManager.default.temporaryDirectory.appendingPathComponent("understudy-\(name)-\(UUID().uuidString).log")
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        process.executableURL = URL(fileURLWithPath: Harness.binary)
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(["UNDERSTUDY_CACHE": Harness.cache]) { $1 }
        process.standardOutput = try FileHandle(forWritingTo: log)
        process.standardError = process.standardOutput
        process.standardInput = FileHandle.nullDevice
        try process.run()
    }

    deinit {
        kill()
        try? FileManager.default.removeItem(at: log)
    }

    var output: String { (try? String(contentsOf: log, encoding: .utf8)) ?? "" }

    func kill() {
        guard process.isRunning else { return }
        Glibc.kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    /// Waits until the output contains `text` `times` times; fails with the output otherwise.
    func waitFor(_ text: String, times: Int = 1, seconds: Double = 60) throws {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if output.components(separatedBy: text).count - 1 >= times { return }
            if !process.isRunning { break }
            usleep(10_000)
        }
        throw PairError.missing("\(name) never said '\(text)' (\(times)×):\n\(output)")
    }

    enum PairError: Error { case missing(String) }
}

/// `understudy backup` and `understudy primary GUEST --mode MODE` on loopback, the primary
/// protected (the backup holds its seed) when `init` returns.
final class ProtectedPair {
    let servicePort = Harness.freePort()
    let replicationPort = Harness.freePort()
    let mode: String
    let guest: String
    let guestArguments: [String]
    private(set) var backup: UnderstudyProcess
    private(set) var primary: UnderstudyProcess

    init(_ guest: String, mode: String, guestArguments: [String] = [], primaryOptions: [String] = [], backupOptions: [String] = []) throws {
        self.mode = mode
        self.guest = guest
        self.guestArguments = guestArguments
        backup = try Self.startBackup(replicationPort: replicationPort, servicePort: servicePort, options: backupOptions)
        primary = try UnderstudyProcess(
            "primary",
            [
                "primary", try Harness.guest(guest), "--listen", "127.0.0.1:\(servicePort)", "--backup",
                "127.0.0.1:\(replicationPort)", "--mode", mode,
            ] + primaryOptions + (guestArguments.isEmpty ? [] : ["--"] + guestArguments))
        try primary.waitFor("the machine is protected")
    }

    static func startBackup(replicationPort: UInt16, servicePort: UInt16, options: [String] = []) throws -> UnderstudyProcess {
        let backup = try UnderstudyProcess(
            "backup", ["backup", "--replication", "127.0.0.1:\(replicationPort)", "--listen", "127.0.0.1:\(servicePort)"] + options)
        try backup.waitFor("waiting for a primary")
        return backup
    }

    /// Replaces the backup (after killing it) with a new process on the same ports.
    func restartBackup() throws {
        backup.kill()
        backup = try Self.startBackup(replicationPort: replicationPort, servicePort: servicePort)
    }

    /// SIGKILLs the primary and waits for the backup to serve; returns the milliseconds from the
    /// kill to the first connection the service accepted and answered.
    @discardableResult
    func killPrimaryAndWaitForTakeover(probe: (UInt16) -> Bool) throws -> Double {
        let killed = Date()
        // Not `kill()`: Process's wait for the exit adds tens of milliseconds to the measurement.
        Glibc.kill(primary.process.processIdentifier, SIGKILL)
        defer { primary.kill() }
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline {
            if probe(servicePort) { return Date().timeIntervalSince(killed) * 1000 }
            if !backup.process.isRunning { break }
            usleep(2_000)
        }
        throw UnderstudyProcess.PairError.missing("the backup never served after the primary died:\n\(backup.output)")
    }

    func stop() {
        primary.kill()
        backup.kill()
    }
}
