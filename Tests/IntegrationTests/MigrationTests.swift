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

    /// The backup wins the handover's generation but its `takingOver` never arrives (the
    /// connection drops first): the primary learns from the generation that it lost the role
    /// to the backup it handed over to, delivers what the backup acknowledged, and the handover
    /// ends as one (not as a primary standing down); the backup serves what was acknowledged.
    func testAHandoverWhoseAnswerIsLostEndsThroughTheGeneration() throws {
        let machine = try ServiceIPMachine("handover")
        defer { machine.stop() }
        let b = try machine.standby(on: "b", options: ["--inject-stall", "before-taking-over"])
        let a = try machine.primary(on: "a", mode: "llm")
        let load = try machine.load()
        defer { load.stop() }
        let outcome = try Harness.run(try Harness.binary(), ["migrate", machine.name, "--etcd", machine.etcd.endpoint], timeoutSeconds: 60)
        XCTAssertEqual(outcome.status, 0, "\(outcome.stderr)\n\(a.output.suffix(2000))\n\(b.output.suffix(2000))")
        try b.waitFor("closing instead of saying so")
        try a.waitFor("handed the machine over")
        XCTAssertFalse(a.output.contains("understudy: standing down"), a.output)
        let before = load.highest
        try Harness.waitUntil("INCRs acknowledged by the new primary") { load.highest > before + 10 }
        try load.checkThroughServiceIP("llm")
    }
}
