import Foundation
import XCTest

/// Planned migration (`understudy migrate`) across real hosts, under load through the service IP:
/// the primary on `a` hands its role to its backup on `b` and becomes its standby; then back.
final class MigrationTests: XCTestCase {
    func testMigratingThereAndBackUnderLoadLosesNothing() throws {
        for mode in ["llm", "remus", "active"] {
            let machine = try ServiceIPMachine("migrate")
            defer { machine.stop() }
            let b = try machine.standby(on: "b")
            let a = try machine.primary(on: "a", mode: mode)
            let load = try machine.load()
            defer { load.stop() }

            var downtimes: [String] = []
            for (from, to) in [(a, b), (b, a)] {
                let outcome = try Harness.run(try Harness.binary(), ["migrate", machine.name, "--etcd", machine.etcd.endpoint], timeoutSeconds: 60)
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
            try load.checkThroughServiceIP(mode)
            print("\(mode): migrated a → b → a under load; downtimes \(downtimes.joined(separator: ", ")); counter ≥ \(load.highest)")
            machine.stop()
        }
    }
}
