import Foundation
import Glibc
import XCTest

/// One `understudy` process started for real, its output in a file, killed with SIGKILL.
final class UnderstudyProcess {
    let child: ChildProcess
    /// "primary", "backup": how its failures name it.
    let role: String
    var pid: Int32 { child.pid }
    var isRunning: Bool { child.isRunning }
    var terminationStatus: Int32? { child.terminationStatus }
    var output: String { child.output }

    /// `host`: one of `Hosts`' namespaces to run in (nil: this one).
    init(_ role: String, _ arguments: [String], environment: [String: String] = [:], host: String? = nil) throws {
        self.role = role
        let environment = environment.merging(["UNDERSTUDY_CACHE": Harness.cache]) { $1 }
        if let host {
            child = try ChildProcess("/usr/bin/ip", ["netns", "exec", Hosts.namespace(host), try Harness.binary()] + arguments, environment: environment)
        } else {
            child = try ChildProcess(try Harness.binary(), arguments, environment: environment)
        }
    }

    func kill() { child.kill() }

    func waitFor(_ text: String, times: Int = 1, seconds: Double = 60) throws {
        do { try child.waitFor(text, times: times, seconds: seconds) } catch HarnessError.timedOut(let text) {
            throw HarnessError.timedOut("the \(role): \(text)")
        }
    }
}

/// `understudy backup` and `understudy primary GUEST --mode MODE` on loopback, fenced by a real
/// etcd of their own (unless a test asks for none), the primary protected (the backup holds its
/// seed, the store records it, and the backup has acknowledged what was released before) when
/// `init` returns, or once it has said `ready`.
final class ProtectedPair {
    let servicePort = Harness.freePort()
    let replicationPort = Harness.freePort()
    let mode: String
    let guest: String
    let guestArguments: [String]
    private(set) var backup: UnderstudyProcess
    private(set) var primary: UnderstudyProcess

    /// How the pair's replication channel is secured: mutual TLS with the run's certificates, or
    /// plain TCP for tests that speak the wire protocol to the backup by hand (`WirePeer`).
    enum Security {
        case tls
        case insecure

        func flags() throws -> [String] {
            switch self {
            case .tls: try Harness.certificates().flags
            case .insecure: ["--insecure-replication"]
            }
        }
    }

    let security: Security

    /// Where the generation is kept: a real etcd started for the pair, or nowhere (the pair then
    /// says that nothing fences a pause or a partition).
    enum Coordination {
        case etcd
        case none
    }

    let etcd: EtcdServer?
    /// The machine's name: its key in etcd.
    var machine: String { "pair-\(servicePort)" }
    var coordinationFlags: [String] { etcd.map { ["--etcd", $0.endpoint, "--name", machine] } ?? [] }

    init(
        _ guest: String, mode: String, security: Security = .tls, coordination: Coordination = .etcd, guestArguments: [String] = [],
        primaryOptions: [String] = [], backupOptions: [String] = [], ready: String = "the machine is protected"
    ) throws {
        self.mode = mode
        self.guest = guest
        self.guestArguments = guestArguments
        self.security = security
        let etcd = coordination == .etcd ? try EtcdServer() : nil
        self.etcd = etcd
        let name = "pair-\(servicePort)"
        let coordinationFlags = etcd.map { ["--etcd", $0.endpoint, "--name", name] } ?? []
        backup = try Self.startBackup(
            replicationPort: replicationPort, servicePort: servicePort, options: try security.flags() + coordinationFlags + backupOptions)
        primary = try UnderstudyProcess(
            "primary",
            [
                "primary", try Harness.guest(guest), "--listen", "127.0.0.1:\(servicePort)", "--backup",
                "127.0.0.1:\(replicationPort)", "--mode", mode,
            ] + (try security.flags()) + coordinationFlags + primaryOptions + (guestArguments.isEmpty ? [] : ["--"] + guestArguments))
        try primary.waitFor(ready)
    }

    static func startBackup(replicationPort: UInt16, servicePort: UInt16, options: [String] = []) throws -> UnderstudyProcess {
        // Every backup runs without wasm-opt: it runs the module its primary prepared, so neither
        // a first seed nor a re-seed may depend on preparing anything.
        let backup = try UnderstudyProcess(
            "backup", ["backup", "--replication", "127.0.0.1:\(replicationPort)", "--listen", "127.0.0.1:\(servicePort)"] + options,
            environment: ["UNDERSTUDY_WASM_OPT": "/nonexistent/wasm-opt"])
        try backup.waitFor("waiting for a primary")
        return backup
    }

    /// Replaces the backup (after killing it) with a new process on the same ports.
    func restartBackup(options: [String] = []) throws {
        backup.kill()
        backup = try Self.startBackup(
            replicationPort: replicationPort, servicePort: servicePort, options: try security.flags() + coordinationFlags + options)
    }

    /// SIGKILLs the primary and waits for the backup to serve; returns the milliseconds from the
    /// kill to the first connection the service accepted and answered.
    @discardableResult
    func killPrimaryAndWaitForTakeover(probe: (UInt16) -> Bool) throws -> Double {
        let killed = Date()
        // Not `kill()`: Process's wait for the exit adds tens of milliseconds to the measurement.
        Glibc.kill(primary.pid, SIGKILL)
        defer { primary.kill() }
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline {
            if probe(servicePort) { return Date().timeIntervalSince(killed) * 1000 }
            if !backup.isRunning { break }
            usleep(2_000)
        }
        throw HarnessError.timedOut("the backup never served after the primary died:\n\(backup.output)")
    }

    func stop() {
        primary.kill()
        backup.kill()
    }
}
