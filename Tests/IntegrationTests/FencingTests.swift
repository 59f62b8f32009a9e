import Foundation
import Glibc
import XCTest

/// The generation on a real etcd keeps "one primary" true when the primary is only paused (a GC
/// stall, CPU starvation, a hypervisor pause): SIGSTOP for 50 ms, 250 ms, 1 s and 5 s under INCR
/// load, then SIGCONT. Afterwards exactly one process serves — the backup, having won the
/// generation, with the resumed primary stood down (status 75), or the primary, the backup not
/// having taken over — and the counter it serves is at least the highest value any client saw.
final class FencingTests: XCTestCase {
    static let pauses: [useconds_t] = [50_000, 250_000, 1_000_000, 5_000_000]

    func testAPausedPrimaryNeverServesBesideItsBackupInLLMMode() throws { try pauses(mode: "llm") }
    func testAPausedPrimaryNeverServesBesideItsBackupInRemusMode() throws { try pauses(mode: "remus") }
    func testAPausedPrimaryNeverServesBesideItsBackupInActiveMode() throws { try pauses(mode: "active") }

    private func pauses(mode: String) throws {
        var outcomes: [String] = []
        for pause in Self.pauses { outcomes.append(try pausedPrimary(mode: mode, pause: pause)) }
        print("\(mode): \(outcomes.joined(separator: "; "))")
    }

    /// Returns what happened, for the log.
    private func pausedPrimary(mode: String, pause: useconds_t) throws -> String {
        let label = "\(mode), paused \(pause / 1000) ms"
        let pair = try ProtectedPair("kv", mode: mode)
        defer { pair.stop() }
        let load = IncrementLoad(port: pair.servicePort, key: "counter")
        defer { load.stop() }
        try Harness.waitUntil("\(label): INCRs acknowledged before the pause") { load.highest >= 20 }
        let primary = pair.primary.pid
        kill(primary, SIGSTOP)
        usleep(pause)
        kill(primary, SIGCONT)
        let resumedAt = load.highest

        // Settled: the backup serves and the primary is gone, or the primary serves and the
        // backup never took over.
        try Harness.waitUntil("\(label): one process serving, acknowledging INCRs again", seconds: 45) {
            let backupServes = pair.backup.output.contains("] serving")
            return load.highest > resumedAt + 10 && (backupServes ? !pair.primary.isRunning : pair.primary.isRunning)
        }
        let backupServes = pair.backup.output.contains("] serving")
        if backupServes {
            XCTAssertEqual(pair.primary.terminationStatus, 75, "\(label): the resumed primary did not stand down:\n\(pair.primary.output.suffix(3000))")
            XCTAssertTrue(pair.primary.output.contains("standing down: lost the primary role"), "\(label):\n\(pair.primary.output.suffix(3000))")
            XCTAssertTrue(pair.backup.output.contains("the primary is gone; taking over"), "\(label):\n\(pair.backup.output.suffix(3000))")
        } else {
            XCTAssertFalse(
                pair.backup.output.contains("taking over"),
                "\(label): the backup took over a primary that serves on:\n\(pair.backup.output.suffix(3000))\nprimary:\n\(pair.primary.output.suffix(3000))")
        }
        load.stop()
        let highest = load.highest
        let served = try XCTUnwrap(Int(try Harness.redisCLI(pair.servicePort, "GET", "counter")), "\(label): the counter is not a number")
        XCTAssertGreaterThanOrEqual(served, highest, "\(label): an acknowledged INCR is lost (a client saw \(highest))")
        XCTAssertEqual(load.errors, [], "\(label): a reply that was not an integer")
        return "\(pause / 1000) ms: \(backupServes ? "backup took over" : "primary served on"), counter \(served) ≥ \(highest)"
    }
}

/// INCRs one at a time on a connection, reconnecting whenever it breaks or a reply does not come
/// within a second — to the first of `hosts`, then, when one stops answering, to the next, in
/// turn: every acknowledgement is kept with the host that gave it, whoever served it.
final class IncrementLoad: @unchecked Sendable {
    private let lock = NSLock()
    private var replies: [(host: String, value: Int)] = []
    private var oddities: [String] = []
    private var running = true
    private let finished = DispatchSemaphore(value: 0)
    let port: UInt16
    let key: String

    var highest: Int { lock.withLock { replies.map(\.value).max() ?? 0 } }
    /// Every acknowledgement so far, in order.
    var acknowledgements: [(host: String, value: Int)] { lock.withLock { replies } }
    func acknowledged(by host: String) -> Int { lock.withLock { replies.filter { $0.host == host }.count } }
    /// Replies that were neither an integer nor a broken connection.
    var errors: [String] { lock.withLock { oddities } }

    /// `from`: the host (namespace) its connections come from; nil: this one.
    init(port: UInt16, key: String, hosts: [String] = ["127.0.0.1"], from origin: String? = nil) {
        self.port = port
        self.key = key
        let request = "*2\r\n$4\r\nINCR\r\n$\(key.utf8.count)\r\n\(key)\r\n"
        Thread { [self] in
            defer { finished.signal() }
            if let origin {
                do { try Hosts.enter(origin) } catch { return lock.withLock { oddities.append("\(error)") } }
            }
            var next = 0
            while lock.withLock({ running }) {
                let host = hosts[next % hosts.count]
                next += 1
                guard let client = try? LineClient(port: port, timeoutSeconds: 1, host: host) else {
                    usleep(5_000)
                    continue
                }
                while lock.withLock({ running }) {
                    guard (try? client.send(request)) != nil, let reply = try? client.readLine() else { break }
                    guard reply.hasPrefix(":"), let value = Int(reply.dropFirst()) else {
                        lock.withLock { oddities.append("\(host): \(reply)") }
                        break
                    }
                    lock.withLock { replies.append((host, value)) }
                }
                client.close()
            }
        }.start()
    }

    /// Stops and waits for the last request's answer (at most the read timeout).
    func stop() {
        let wasRunning = lock.withLock { () -> Bool in
            defer { running = false }
            return running
        }
        if wasRunning { _ = finished.wait(timeout: .now() + 5) }
    }
}

/// Without etcd nothing can be decided: a side that cannot reach it holds, and does not serve.
final class UnreachableStoreTests: XCTestCase {
    /// The primary loses its backup while etcd is stopped: it cannot win the next generation, so
    /// it answers nobody, and after --fence-timeout it stands down (status 75).
    func testAPrimaryThatCannotReachEtcdHoldsThenStandsDown() throws {
        let pair = try ProtectedPair("kv", mode: "llm", primaryOptions: ["--fence-timeout", "1s"])
        defer { pair.stop() }
        XCTAssertEqual(try Harness.redisCLI(pair.servicePort, "SET", "k", "v"), "OK")
        let client = try LineClient(port: pair.servicePort, timeoutSeconds: 10)
        pair.etcd!.pause()
        defer { pair.etcd!.resume() }
        pair.backup.kill()
        try pair.primary.waitFor("backup lost; holding output until the next generation is won")
        try client.send("*2\r\n$3\r\nGET\r\n$1\r\nk\r\n")
        // No reply may leave: the answer is the connection ending when the primary stands down.
        XCTAssertThrowsError(try client.readLine(), "a reply left a primary that holds no generation")
        XCTAssertEqual(try pair.primary.child.waitForExit(seconds: 30), 75, pair.primary.output)
        XCTAssertTrue(pair.primary.output.contains("could not reach the generation store"), pair.primary.output)
    }

    /// The primary dies while etcd is paused: the backup claims, cannot be answered, and does not
    /// serve; once etcd answers again it wins the generation and serves every acknowledged write.
    func testABackupThatCannotReachEtcdDoesNotServeUntilItAnswers() throws {
        let pair = try ProtectedPair("kv", mode: "llm")
        defer { pair.stop() }
        XCTAssertEqual(try Harness.redisCLI(pair.servicePort, "SET", "k", "v"), "OK")
        pair.etcd!.pause()
        kill(pair.primary.pid, SIGKILL)
        try pair.backup.waitFor("cannot reach the generation store; not taking over until it answers")
        usleep(1_000_000)
        XCTAssertFalse(pair.backup.output.contains("] serving"), "the backup served without winning the generation:\n\(pair.backup.output)")
        XCTAssertThrowsError(try LineClient(port: pair.servicePort, timeoutSeconds: 1), "something serves the machine")
        pair.etcd!.resume()
        try pair.backup.waitFor("] serving")
        XCTAssertEqual(try Harness.redisCLI(pair.servicePort, "GET", "k"), "v")
    }
}

/// What a primary finds in etcd when it starts: a machine let go by a guest that exited is
/// claimed at once; one whose holder was killed is refused, naming the generation, until
/// `--take-over-generation` says that holder is gone.
final class GenerationClaimTests: XCTestCase {
    private func primary(_ etcd: EtcdServer, name: String, _ extra: [String] = []) throws -> UnderstudyProcess {
        try UnderstudyProcess(
            "primary",
            ["primary", try Harness.guest("pagetouch"), "--backup", "127.0.0.1:\(Harness.freePort())", "--mode", "llm",
             "--insecure-replication", "--etcd", etcd.endpoint, "--name", name] + extra + ["--", "1", "1", "20"])
    }

    func testAMachineLetGoIsClaimedAndAKilledHoldersIsRefusedUntilNamed() throws {
        let etcd = try EtcdServer()
        let first = try primary(etcd, name: "exits")
        XCTAssertEqual(try first.child.waitForExit(seconds: 60), 0, first.output)
        XCTAssertTrue(first.output.contains("the machine is let go in generation 2"), first.output)
        let second = try primary(etcd, name: "exits")
        XCTAssertEqual(try second.child.waitForExit(seconds: 60), 0, "a machine let go was refused:\n\(second.output)")

        let killed = try UnderstudyProcess(
            "primary",
            ["primary", try Harness.guest("kv"), "--listen", "127.0.0.1:\(Harness.freePort())", "--backup", "127.0.0.1:\(Harness.freePort())",
             "--mode", "llm", "--insecure-replication", "--etcd", etcd.endpoint, "--name", "killed"])
        try killed.waitFor("generation won: serving alone")
        killed.kill()
        let refused = try primary(etcd, name: "killed")
        XCTAssertEqual(try refused.child.waitForExit(seconds: 60), 1, refused.output)
        XCTAssertTrue(refused.output.contains("if that process is gone, pass --take-over-generation 1"), refused.output)
        let named = try primary(etcd, name: "killed", ["--take-over-generation", "1"])
        XCTAssertEqual(try named.child.waitForExit(seconds: 60), 0, named.output)
        XCTAssertTrue(named.output.contains("generation=2"), named.output)
    }
}
