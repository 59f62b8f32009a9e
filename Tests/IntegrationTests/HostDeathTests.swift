import Foundation
import XCTest

/// Host death across real hosts (network namespaces): the primary on `a`, its backup on `b`, etcd
/// on `etcd`, clients in `clients` using only the service IP. `a` dies silently (cut, then
/// SIGKILL: no FIN or RST reaches anyone), so the backup learns of it from heartbeat silence
/// alone; it must win the generation, take the service IP and serve, keeping every
/// acknowledged write.
final class HostDeathTests: XCTestCase {
    func testTheServiceIPMovesToTheBackupWhenThePrimarysHostDies() throws {
        for mode in ["llm", "remus", "active"] {
            let pair = try HostPair(mode: mode, serviceIP: true)
            defer { pair.stop() }
            XCTAssertTrue(try Hosts.holdsServiceIP("a"), "\(mode): the primary does not hold the service IP")
            XCTAssertFalse(try Hosts.holdsServiceIP("b"), "\(mode): the standby holds the service IP")
            XCTAssertEqual(try redisCLI(pair, "SET", "before", "1"), "OK", mode)
            let load = IncrementLoad(port: pair.servicePort, key: "counter", hosts: [Hosts.serviceIP], from: "clients")
            defer { load.stop() }
            try Harness.waitUntil("\(mode): INCRs acknowledged through the service IP") { load.highest >= 20 }

            try Hosts.kill("a")
            try pair.backup.waitFor("took the service IP")
            XCTAssertTrue(pair.backup.output.contains("the peer has been silent"), "\(mode): detected otherwise than by silence:\n\(pair.backup.output)")
            let before = load.highest
            try Harness.waitUntil("\(mode): INCRs acknowledged again after the failover") { load.highest > before + 10 }
            try load.checkThroughServiceIP(mode)
            XCTAssertTrue(try Hosts.holdsServiceIP("b"), mode)
            XCTAssertEqual(try redisCLI(pair, "GET", "before"), "1", mode)
            print("\(mode): host a died; b serves \(Hosts.serviceIP), counter ≥ \(load.highest)")
            pair.stop()
            try Hosts.heal("a")  // rebooted, empty, for the next mode
        }
    }

    func redisCLI(_ pair: HostPair, _ arguments: String...) throws -> String { try Hosts.redisCLI(port: pair.servicePort, arguments) }
}

extension HostDeathTests {
    /// The link between primary and backup cut, etcd reachable from both, clients on the service
    /// IP: exactly one side wins the generation; the winner holds the IP at the end, the loser
    /// does not (a primary that lost removes it before it stands down), and no acknowledged INCR
    /// is lost. Healed, the pair forms again by itself: a backup that lost is seeded again, a
    /// primary that lost (`--replication`) becomes a standby and is seeded.
    func testCuttingThePrimaryFromItsBackupLeavesTheServiceIPWithTheWinner() throws {
        for mode in ["llm", "remus"] {
            let pair = try HostPair(mode: mode, serviceIP: true, primaryOptions: ["--replication", "\(try Hosts.address("a")):7001"])
            defer { pair.stop() }
            let load = IncrementLoad(port: pair.servicePort, key: "counter", hosts: [Hosts.serviceIP], from: "clients")
            defer { load.stop() }
            try Harness.waitUntil("\(mode): INCRs acknowledged through the service IP") { load.highest >= 20 }
            try Hosts.cutLink("a", "b")
            try Harness.waitUntil("\(mode): one side settled", seconds: 30) {
                pair.backup.output.contains("took the service IP")
                    ? pair.primary.output.contains("becoming the new primary's standby") : pair.backup.output.contains("not taking over")
            }
            let winner = pair.backup.output.contains("took the service IP") ? "b" : "a"
            let loser = winner == "a" ? "b" : "a"
            XCTAssertTrue(try Hosts.holdsServiceIP(winner), "\(mode): the winner \(winner) does not hold the service IP")
            XCTAssertFalse(try Hosts.holdsServiceIP(loser), "\(mode): the loser \(loser) still holds the service IP")
            if winner == "b" {
                XCTAssertTrue(pair.primary.output.contains("standing down: lost the primary role"), "\(mode):\n\(pair.primary.output.suffix(2000))")
                XCTAssertTrue(pair.primary.output.contains("gave up the service IP"), "\(mode):\n\(pair.primary.output.suffix(2000))")
            }
            try Hosts.healLink("a", "b")
            let winnerOutput = { winner == "a" ? pair.primary.output : pair.backup.output }
            try Harness.waitUntil("\(mode): the pair formed again by itself, \(winner) protected by \(loser)", seconds: 30) {
                winnerOutput().components(separatedBy: "the machine is protected").count - 1 >= (winner == "a" ? 2 : 1)
            }
            let before = load.highest
            try Harness.waitUntil("\(mode): INCRs acknowledged again by \(winner)") { load.highest > before + 10 }
            try load.checkThroughServiceIP(mode)
            print("\(mode): cut a↔b with the service IP: \(winner) serves it")
            pair.stop()
        }
    }
}

extension HostDeathTests {
    /// Five host deaths in a row under load, alternating `a` and `b`: after each, the survivor
    /// (a promoted backup, itself now the primary) serves the service IP, and a standby started
    /// again on the dead host registers in etcd and is seeded, so the machine is protected
    /// again before the next death. No service process is restarted by hand, and nothing
    /// acknowledged is lost across the chain. In every mode.
    func testAChainOfHostDeathsHealsItselfEachTime() throws {
        for mode in ["llm", "remus", "active"] {
            let machine = try ServiceIPMachine("chain")
            defer { machine.stop() }
            var processes = ["b": try machine.standby(on: "b")]
            processes["a"] = try machine.primary(on: "a", mode: mode)
            let load = try machine.load()
            defer { load.stop() }
            var (serving, standingBy) = ("a", "b")
            for death in 1...5 {
                try Hosts.kill(serving)
                let survivor = processes[standingBy]!
                try survivor.waitFor("took the service IP")
                let before = load.highest
                try Harness.waitUntil("\(mode), death \(death): INCRs acknowledged by \(standingBy)") { load.highest > before + 10 }
                try Hosts.heal(serving)  // rebooted, empty
                processes[serving] = try machine.standby(on: serving)
                try survivor.waitFor("the machine is protected")
                XCTAssertTrue(try Hosts.holdsServiceIP(standingBy), "\(mode), death \(death)")
                XCTAssertFalse(try Hosts.holdsServiceIP(serving), "\(mode), death \(death): a rebooted standby holds the service IP")
                (serving, standingBy) = (standingBy, serving)
            }
            let before = load.highest
            try Harness.waitUntil("\(mode): INCRs acknowledged at the end") { load.highest > before + 10 }
            try load.checkThroughServiceIP(mode)
            print("\(mode): five host deaths healed; counter ≥ \(load.highest)")
            machine.stop()
            try Hosts.heal("a")
            try Hosts.heal("b")
        }
    }
}
