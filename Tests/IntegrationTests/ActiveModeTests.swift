import Foundation
import Glibc
import XCTest

/// `--mode active` (issue 5): the backup runs the machine from the log, syncs compare digests,
/// and a fault injected into the backup's memory is found and repaired by the next sync, after
/// which the backup's whole state equals the primary's.
final class ActiveModeTests: XCTestCase {
    private func metric(_ name: String, port: UInt16) throws -> Double { try MetricsScrape(port: port).value(name) }

    func testASyncFindsAndRepairsCorruptedBackupMemoryThenTheBackupTakesOverCorrectly() throws {
        let (primaryMetrics, backupMetrics) = (Harness.freePort(), Harness.freePort())
        let pair = try ProtectedPair(
            "kv", mode: "active",
            primaryOptions: ["--verify-syncs", "--sync-every", "20ms", "--metrics", "127.0.0.1:\(primaryMetrics)"],
            backupOptions: ["--inject-corruption-at-sync", "5", "--metrics", "127.0.0.1:\(backupMetrics)"])
        defer { pair.stop() }
        let port = "\(pair.servicePort)"
        let load = try ClientProcess("redis-benchmark", ["-p", port, "-t", "set", "-r", "100000", "-n", "10000000", "-c", "4", "-q"])
        defer { load.stop() }
        try pair.backup.waitFor("fault injection: corrupted the backup's memory", seconds: 30)
        try pair.backup.waitFor("sync found the backup diverged; repaired", seconds: 30)
        try pair.primary.waitFor("sending the blocks that differ", seconds: 30)
        let verifiedAtRepair = try metric("understudy_sync_verified", port: backupMetrics)
        // Later syncs keep verifying the whole state against the primary's.
        try Harness.waitUntil("ten more verified syncs:\n\(pair.backup.output)") {
            try metric("understudy_sync_verified", port: backupMetrics) >= verifiedAtRepair + 10
        }
        XCTAssertEqual(try metric("understudy_sync_verification_failures", port: backupMetrics), 0)
        XCTAssertEqual(try metric("understudy_sync_divergences", port: backupMetrics), 1, "only the injected fault differs")
        XCTAssertGreaterThanOrEqual(try metric("understudy_sync_repaired_blocks", port: backupMetrics), 4, "four corrupted spots")
        XCTAssertEqual(try metric("understudy_sync_divergences", port: primaryMetrics), 1)
        XCTAssertFalse(pair.primary.output.contains("backup lost"), pair.primary.output)
        load.stop()

        XCTAssertEqual(try Harness.redisCLI(pair.servicePort, ["SET", "after-the-repair", "kept"]), "OK")
        try pair.killPrimaryAndWaitForTakeover { port in (try? Harness.run("redis-cli", ["-p", "\(port)", "PING"]).stdout.hasPrefix("PONG")) ?? false }
        try pair.backup.waitFor("caught up with the primary's log; live")
        XCTAssertFalse(pair.backup.output.contains("replayed the log"), "an active backup goes live in place")
        XCTAssertEqual(try Harness.redisCLI(pair.servicePort, ["GET", "after-the-repair"]), "kept")
    }

    /// The two sides of a pair may run different engines (each process chooses its own): an
    /// active pair with the primary on one and the backup on the other computes the same states,
    /// so whole-state verified syncs find nothing to repair under load; then the backup takes
    /// over with what the primary acknowledged.
    func testAPairOnTwoEnginesComputesTheSameStates() throws {
        let backupMetrics = Harness.freePort()
        let pair = try ProtectedPair(
            "kv", mode: "active",
            primaryOptions: ["--engine", Harness.engine, "--verify-syncs", "--sync-every", "20ms"],
            backupOptions: ["--engine", Harness.otherEngine, "--metrics", "127.0.0.1:\(backupMetrics)"])
        defer { pair.stop() }
        XCTAssertTrue(pair.primary.output.contains("engine=\(Harness.engine)"), pair.primary.output)
        let load = try ClientProcess(
            "redis-benchmark", ["-p", "\(pair.servicePort)", "-t", "set,incr", "-r", "100000", "-n", "10000000", "-c", "4", "-q"])
        defer { load.stop() }
        try Harness.waitUntil("twenty verified syncs:\n\(pair.backup.output)") {
            try metric("understudy_sync_verified", port: backupMetrics) >= 20
        }
        load.stop()
        XCTAssertEqual(try metric("understudy_sync_verification_failures", port: backupMetrics), 0)
        XCTAssertEqual(try metric("understudy_sync_divergences", port: backupMetrics), 0, pair.backup.output)

        XCTAssertEqual(try Harness.redisCLI(pair.servicePort, ["SET", "engines", "two"]), "OK")
        try pair.killPrimaryAndWaitForTakeover { port in (try? Harness.run("redis-cli", ["-p", "\(port)", "PING"]).stdout.hasPrefix("PONG")) ?? false }
        XCTAssertTrue(pair.backup.output.contains("engine=\(Harness.otherEngine)"), pair.backup.output)
        XCTAssertEqual(try Harness.redisCLI(pair.servicePort, ["GET", "engines"]), "two")
    }

    func testActiveFlagsAreCheckedWithAReason() throws {
        let kv = try Harness.guest("kv")
        let cases: [([String], String)] = [
            (["--mode", "active", "--block-size", "100"], "--block-size must be one of 64, 128, 256"),
            (["--mode", "llm", "--sync-every", "10ms"], "apply to --mode active"),
            (["--mode", "remus", "--verify-syncs"], "apply to --mode active"),
            (["--mode", "none"], "--mode must be remus, llm or active"),
        ]
        for (options, reason) in cases {
            let outcome = try Harness.understudy(["primary", kv, "--listen", "127.0.0.1:1", "--backup", "127.0.0.1:2", "--insecure-replication"] + options)
            XCTAssertNotEqual(outcome.status, 0)
            XCTAssertTrue(outcome.stderr.contains(reason), "\(options): \(outcome.stderr)")
        }
    }
}
