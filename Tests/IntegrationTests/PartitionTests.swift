import Foundation
import Glibc
import XCTest

/// Partitions between real hosts (network namespaces, `Hosts`): the primary on `a`, its backup on
/// `b`, etcd on `etcd`, clients here. A cut is silent (no FIN, no RST, no error): only heartbeats
/// notice it. At no moment may two processes acknowledge writes, and no acknowledged write may be
/// lost. (The service address does not move between hosts yet: clients try `a`, then `b`.)
final class PartitionTests: XCTestCase {
    /// The link between primary and backup cut, etcd reachable from both: both notice the silence
    /// and claim the next generation; exactly one wins. If the backup won, the primary stands
    /// down; if the primary won, the backup drops its copy and is seeded again once healed.
    func testCuttingThePrimaryFromItsBackupLeavesOneServing() throws {
        for mode in ["llm", "remus", "active"] {
            let pair = try HostPair(mode: mode)
            let load = IncrementLoad(port: pair.servicePort, key: "counter", hosts: [Hosts.addresses["a"]!, Hosts.addresses["b"]!])
            defer { load.stop() }
            try Harness.waitUntil("\(mode): INCRs acknowledged by a") { load.acknowledged(by: Hosts.addresses["a"]!) >= 20 }
            try Hosts.cutLink("a", "b")
            try Harness.waitUntil("\(mode): one side settled", seconds: 30) {
                pair.backup.output.contains("] serving") ? !pair.primary.isRunning : pair.backup.output.contains("not taking over")
            }
            try Hosts.healLink("a", "b")
            let winner = pair.backup.output.contains("] serving") ? "b" : "a"
            if winner == "b" {
                XCTAssertEqual(pair.primary.terminationStatus, 75, "\(mode):\n\(pair.primary.output.suffix(2000))")
            } else {
                XCTAssertTrue(pair.primary.isRunning, mode)
                try pair.primary.waitFor("the machine is protected", times: 2)  // seeded again after the heal
            }
            let before = load.highest
            try Harness.waitUntil("\(mode): INCRs acknowledged again by \(winner)") { load.highest > before + 10 }
            load.stop()
            try load.check(winner: winner, mode)
            print("\(mode): cut a↔b: \(winner) serves, counter ≥ \(load.highest)")
            pair.stop()
        }
    }

    /// The primary's host cut from everything: it cannot reach etcd to win a generation, so it
    /// holds and stands down after --fence-timeout; the backup wins and serves.
    func testCuttingThePrimaryFromEverythingMovesTheServiceToTheBackup() throws {
        let pair = try HostPair(mode: "llm", primaryOptions: ["--fence-timeout", "1s"])
        let load = IncrementLoad(port: pair.servicePort, key: "counter", hosts: [Hosts.addresses["a"]!, Hosts.addresses["b"]!])
        defer { load.stop() }
        try Harness.waitUntil("INCRs acknowledged by a") { load.acknowledged(by: Hosts.addresses["a"]!) >= 20 }
        try Hosts.cut("a")
        try pair.backup.waitFor("] serving")
        XCTAssertEqual(try pair.primary.child.waitForExit(seconds: 30), 75, pair.primary.output)
        XCTAssertTrue(pair.primary.output.contains("could not reach the generation store"), pair.primary.output)
        try Hosts.heal("a")
        let before = load.highest
        try Harness.waitUntil("INCRs acknowledged by b") { load.highest > before + 10 }
        load.stop()
        try load.check(winner: "b", "cut a")
    }

    /// The backup cut from etcd: steady service does not touch etcd, so nothing changes; when the
    /// primary's host then dies, the backup cannot win and does not serve, until etcd answers.
    func testABackupCutFromEtcdServesOnlyOnceItWins() throws {
        let pair = try HostPair(mode: "llm")
        let load = IncrementLoad(port: pair.servicePort, key: "counter", hosts: [Hosts.addresses["a"]!, Hosts.addresses["b"]!])
        defer { load.stop() }
        try Harness.waitUntil("INCRs acknowledged by a") { load.acknowledged(by: Hosts.addresses["a"]!) >= 20 }
        try Hosts.cutLink("b", "etcd")
        usleep(500_000)
        XCTAssertFalse(pair.primary.output.contains("backup lost"), "cutting the backup from etcd disturbed the pair:\n\(pair.primary.output)")
        try Hosts.kill("a")
        try pair.backup.waitFor("cannot reach the generation store; not taking over until it answers")
        usleep(500_000)
        XCTAssertFalse(pair.backup.output.contains("] serving"), "the backup served without winning:\n\(pair.backup.output)")
        try Hosts.healLink("b", "etcd")
        try pair.backup.waitFor("] serving")
        let before = load.highest
        try Harness.waitUntil("INCRs acknowledged by b (\(load.acknowledged(by: Hosts.addresses["b"]!)) so far):\n\(pair.backup.output.suffix(2500))") {
            load.highest > before + 10
        }
        load.stop()
        try load.check(winner: "b", "backup cut from etcd, then a killed")
    }
}

/// A primary on host `a`, its backup on `b`, etcd on `etcd`; mutual TLS. With `serviceIP` both
/// listen on `Hosts.serviceIP`, which moves with the primary role; otherwise each on its host's
/// own address.
final class HostPair {
    let servicePort = Harness.freePort()
    let replicationPort = Harness.freePort()
    let etcd: EtcdServer
    let backup: UnderstudyProcess
    let primary: UnderstudyProcess

    init(mode: String, serviceIP: Bool = false, primaryOptions: [String] = []) throws {
        try Hosts.up()
        etcd = try EtcdServer(host: "etcd")
        let (a, b) = (try Hosts.address("a"), try Hosts.address("b"))
        let common = try Harness.certificates().flags + ["--etcd", etcd.endpoint, "--name", "hosts-\(servicePort)"]
            + (serviceIP ? Hosts.serviceIPFlags : [])
        backup = try UnderstudyProcess(
            "backup", ["backup", "--replication", "\(b):\(replicationPort)", "--listen", "\(serviceIP ? Hosts.serviceIP : b):\(servicePort)"] + common,
            environment: ["UNDERSTUDY_WASM_OPT": "/nonexistent/wasm-opt"], host: "b")
        try backup.waitFor("waiting for a primary")
        primary = try UnderstudyProcess(
            "primary",
            [
                "primary", try Harness.guest("kv"), "--listen", "\(serviceIP ? Hosts.serviceIP : a):\(servicePort)", "--backup",
                "\(b):\(replicationPort)", "--mode", mode,
            ] + common + primaryOptions, host: "a")
        try primary.waitFor("the machine is protected")
    }

    func stop() {
        primary.kill()
        backup.kill()
        etcd.stop()
    }
}

extension IncrementLoad {
    /// No two processes acknowledged writes: once the backup's host `b` answered, the primary's
    /// `a` acknowledged no value `b` did not already hold (none at all if `a` won). And the
    /// winner's counter is at least every value any client saw.
    func check(winner: String, _ label: String) throws {
        let (a, b) = (Hosts.addresses["a"]!, Hosts.addresses["b"]!)
        let all = acknowledgements
        XCTAssertEqual(errors, [], "\(label): replies that were not integers")
        if winner == "a" {
            XCTAssertEqual(all.filter { $0.host == b }.map(\.value), [], "\(label): b acknowledged INCRs though a won")
        } else if let first = all.firstIndex(where: { $0.host == b }) {
            let late = all[first...].filter { $0.host == a && $0.value >= all[first].value }
            XCTAssertEqual(late.map(\.value), [], "\(label): a acknowledged INCRs after b began to serve at \(all[first].value)")
        }
        let client = try LineClient(port: port, timeoutSeconds: 5, host: Hosts.addresses[winner]!)
        defer { client.close() }
        try client.send("*2\r\n$3\r\nGET\r\n$\(key.utf8.count)\r\n\(key)\r\n")
        XCTAssertTrue(try client.readLine().hasPrefix("$"), "\(label): the counter is missing on \(winner)")
        let served = try XCTUnwrap(Int(try client.readLine()), "\(label): the counter is not a number")
        let highest = all.map(\.value).max() ?? 0
        XCTAssertGreaterThanOrEqual(served, highest, "\(label): an acknowledged INCR is lost (a client saw \(highest), \(winner) serves \(served))")
    }
}
