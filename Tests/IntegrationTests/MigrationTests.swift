import Foundation
import XCTest

/// Planned migration (`understudy migrate`) across real hosts, under load through the service IP:
/// the primary on `a` hands its role to its backup on `b` and becomes its standby; then back.
final class MigrationTests: XCTestCase {
    func testMigratingThereAndBackUnderLoadLosesNothing() throws {
        for mode in ["llm", "remus", "active"] {
            try Hosts.up()
            let etcd = try EtcdServer(host: "etcd")
            defer { etcd.stop() }
            let servicePort = Harness.freePort()
            let replicationPort = Harness.freePort()
            let name = "migrate-\(servicePort)"
            let common = try Harness.certificates().flags + ["--etcd", etcd.endpoint, "--name", name] + Hosts.serviceIPFlags
            let listen = ["--listen", "\(Hosts.serviceIP):\(servicePort)"]
            let b = try UnderstudyProcess(
                "backup on b", ["backup", "--replication", "\(try Hosts.address("b")):\(replicationPort)"] + listen + common,
                environment: ["UNDERSTUDY_WASM_OPT": "/nonexistent/wasm-opt"], host: "b")
            defer { b.kill() }
            try b.waitFor("registered as a standby")
            let a = try UnderstudyProcess(
                "primary on a",
                ["primary", try Harness.guest("kv"), "--mode", mode, "--replication", "\(try Hosts.address("a")):\(replicationPort)"]
                    + listen + common, host: "a")
            defer { a.kill() }
            try a.waitFor("the machine is protected")
            let load = IncrementLoad(port: servicePort, key: "counter", hosts: [Hosts.serviceIP], from: "clients")
            defer { load.stop() }
            try Harness.waitUntil("\(mode): INCRs acknowledged") { load.highest >= 20 }

            var downtimes: [String] = []
            for (from, to) in [(a, b), (b, a)] {
                let outcome = try Harness.run(try Harness.binary(), ["migrate", name, "--etcd", etcd.endpoint], timeoutSeconds: 60)
                XCTAssertEqual(outcome.status, 0, "\(mode): \(outcome.stderr)\n\(from.output.suffix(2000))\n\(to.output.suffix(2000))")
                let line = outcome.stderr.split(separator: "\n").last { $0.contains("downtime") } ?? ""
                XCTAssertTrue(line.contains("is served in generation"), "\(mode): \(outcome.stderr)")
                downtimes.append(String(line.split(separator: "downtime ").last ?? "?"))
                try from.waitFor("handed the machine over")
                try from.waitFor("becoming the new primary's standby")
                // The old primary, a standby now, is seeded by the new one: protected again.
                try Harness.waitUntil("\(mode): protected again after the migration to \(to.role)", seconds: 30) {
                    to.output.components(separatedBy: "the machine is protected").count - 1 >= (to === b ? 1 : 2)
                }
                let before = load.highest
                try Harness.waitUntil("\(mode): INCRs acknowledged after the migration to \(to.role)") { load.highest > before + 10 }
            }
            XCTAssertTrue(try Hosts.holdsServiceIP("a"), mode)
            XCTAssertFalse(try Hosts.holdsServiceIP("b"), mode)
            load.stop()
            XCTAssertEqual(load.errors, [], mode)
            let values = load.acknowledgements.map(\.value)
            XCTAssertEqual(values, values.sorted(), "\(mode): the counter went backwards across a migration")
            XCTAssertEqual(Set(values).count, values.count, "\(mode): one value acknowledged twice")
            let served = try XCTUnwrap(Int(try Hosts.redisCLI(port: servicePort, ["GET", "counter"])), mode)
            XCTAssertGreaterThanOrEqual(served, load.highest, "\(mode): an acknowledged INCR is lost")
            print("\(mode): migrated a → b → a under load; downtimes \(downtimes.joined(separator: ", ")); counter ≥ \(load.highest)")
            a.kill()
            b.kill()
        }
    }
}
