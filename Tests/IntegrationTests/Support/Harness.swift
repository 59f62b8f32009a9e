import Foundation
import Glibc
import XCTest

/// Where the built `understudy` and guests are, and how tests run programs, reach ports and
/// keep temporary files. Everything it hands out is owned by the test that asked (`TestScope`).
enum Harness {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent()

    static let binaryPath: String =
        ProcessInfo.processInfo.environment["UNDERSTUDY_BIN"] ?? root.appendingPathComponent(".build/release/understudy").path

    static let guests: URL =
        ProcessInfo.processInfo.environment["UNDERSTUDY_GUESTS"].map { URL(fileURLWithPath: $0) }
        ?? root.appendingPathComponent("guests/build")

    /// Shared by every process a test run starts, so each guest is prepared (wasm-opt) once.
    static let cache = FileManager.default.temporaryDirectory.appendingPathComponent("understudy-integration-cache").path

    /// The built `understudy`; a test that needs it fails (never skips) when it is missing.
    static func binary() throws -> String {
        guard FileManager.default.isExecutableFile(atPath: binaryPath) else {
            throw HarnessError.missingPrerequisite("\(binaryPath) is not built: run `make build` (make test does)")
        }
        return binaryPath
    }

    static func guest(_ name: String) throws -> String {
        _ = try binary()
        let path = guests.appendingPathComponent("\(name).wasm").path
        guard FileManager.default.fileExists(atPath: path) else {
            throw HarnessError.missingPrerequisite("\(path) is not built: run `make guests` (make test does)")
        }
        return path
    }

    /// A throwaway certificate authority and a certificate it signed (`scripts/certs.sh`), made
    /// once per run, and a stranger's: another authority and its certificate.
    struct Certificates {
        let directory: URL
        var authority: String { directory.appendingPathComponent("ca.pem").path }
        func certificate(_ name: String = "node") -> String { directory.appendingPathComponent("\(name).pem").path }
        func key(_ name: String = "node") -> String { directory.appendingPathComponent("\(name).key").path }

        /// `primary` and `backup` flags for mutual TLS with this run's authority.
        var flags: [String] { ["--tls-cert", certificate(), "--tls-key", key(), "--tls-ca", authority] }
    }

    static func certificates() throws -> Certificates {
        let directory = TestScope.runDirectory.appendingPathComponent("certificates")
        for name in ["node", "stranger"] {
            let made = try run("bash", [root.appendingPathComponent("scripts/certs.sh").path, directory.path, name], timeoutSeconds: 60)
            guard made.status == 0 else { throw HarnessError.missingPrerequisite("scripts/certs.sh failed (is openssl installed? make test installs it): \(made.stderr)") }
        }
        return Certificates(directory: directory)
    }

    /// A path in a directory of this test run's own, removed when the current test ends.
    static func scratch(_ label: String, suffix: String = "") -> URL {
        let url = TestScope.runDirectory.appendingPathComponent("\(label)-\(UUID().uuidString)\(suffix)")
        TestScope.current.own(url)
        return url
    }

    /// A port no other test of this run was given and that nobody listens on right now.
    static func freePort() -> UInt16 { PortAllocator.shared.next() }

    /// A TCP connection to `host`:`port` whose connect, reads and writes time out after
    /// `timeoutSeconds` (a host that was cut answers no SYN: the connect must not wait minutes).
    static func connect(port: UInt16, timeoutSeconds: Int, host: String = "127.0.0.1") throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var timeout = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))  // bounds connect(2) too
        var address = loopback(port: port)
        address.sin_addr.s_addr = inet_addr(host)
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else {
            Glibc.close(fd)
            throw POSIXError(.ECONNREFUSED)
        }
        return fd
    }

    static func loopback(port: UInt16) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        return address
    }

    struct Outcome {
        var status: Int32
        var stdout: String
        var stderr: String
    }

    /// The engine the suite's machines run on (`make test` runs it on each), and the other one.
    static let engine = ProcessInfo.processInfo.environment["UNDERSTUDY_ENGINE"].flatMap { $0.isEmpty ? nil : $0 } ?? "wasmtime"
    static var otherEngine: String { engine == "wasmkit" ? "wasmtime" : "wasmkit" }

    /// Runs a program to completion (a client like redis-cli, or understudy expected to fail);
    /// one that has not finished after `timeoutSeconds` is killed and the test fails with its output.
    @discardableResult
    static func run(
        _ program: String, _ arguments: [String], environment: [String: String] = [:], timeoutSeconds: Double = 120
    ) throws -> Outcome {
        let child = try ChildProcess(program, arguments, environment: environment, separateStderr: true)
        let status = try child.waitForExit(seconds: timeoutSeconds)
        let outcome = Outcome(status: status, stdout: child.output, stderr: child.errorOutput)
        child.discard()
        return outcome
    }

    /// `understudy ARGUMENTS`, run to completion with the shared module cache.
    @discardableResult
    static func understudy(_ arguments: [String], timeoutSeconds: Double = 120) throws -> Outcome {
        try run(try binary(), arguments, environment: ["UNDERSTUDY_CACHE": cache], timeoutSeconds: timeoutSeconds)
    }

    /// `redis-cli -p PORT ARGUMENTS`, which must succeed; its reply, trimmed.
    static func redisCLI(_ port: UInt16, _ arguments: String...) throws -> String { try redisCLI(port, arguments) }

    static func redisCLI(_ port: UInt16, _ arguments: [String]) throws -> String {
        let outcome = try run("redis-cli", ["-p", "\(port)"] + arguments, timeoutSeconds: 30)
        XCTAssertEqual(outcome.status, 0, outcome.stderr)
        return outcome.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Polls `condition` until it holds; fails the test with `what` after `seconds`.
    static func waitUntil(_ what: @autoclosure () -> String, seconds: Double = 30, _ condition: () throws -> Bool) throws {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if try condition() { return }
            usleep(10_000)
        }
        throw HarnessError.timedOut("\(what()) did not happen within \(Int(seconds)) s")
    }
}

enum HarnessError: Error, CustomStringConvertible {
    case missingPrerequisite(String)
    case timedOut(String)
    case missingMetric(String)

    var description: String {
        switch self {
        case .missingPrerequisite(let text), .timedOut(let text), .missingMetric(let text): text
        }
    }
}

/// Ports for one test run: handed out once each, so a pair's two ports never collide, and
/// below the kernel's ephemeral range (32768–60999), so no client socket takes one meanwhile.
final class PortAllocator: @unchecked Sendable {
    static let shared = PortAllocator()
    private static let range: ClosedRange<UInt16> = 20_000...32_000
    private let lock = NSLock()
    private var candidate: UInt16

    private init() {
        // Another test run on this machine starts elsewhere in the range.
        candidate = Self.range.lowerBound + UInt16(getpid() % 60) * 200
    }

    func next() -> UInt16 {
        lock.withLock {
            for _ in Self.range {
                let port = candidate
                candidate = candidate == Self.range.upperBound ? Self.range.lowerBound : candidate + 1
                if Self.isFree(port) { return port }
            }
            preconditionFailure("no free port in \(Self.range)")
        }
    }

    private static func isFree(_ port: UInt16) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = Harness.loopback(port: port)
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        } == 0
    }
}
