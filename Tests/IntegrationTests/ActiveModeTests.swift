import Foundation
import Glibc
import XCTest

/// `--mode active` (issue 5): the backup runs the machine from the log, syncs compare digests,
/// and a fault injected into the backup's memory is found and repaired by the next sync, after
/// which the backup's whole state equals the primary's.
final class ActiveModeTests: XCTestCase {
    private func metric(_ name: String, port: UInt16) throws -> Double {
        let scrape = try Harness.run("curl", ["-sf", "http://127.0.0.1:\(port)/metrics"])
        XCTAssertEqual(scrape.status, 0, scrape.stderr)
        return scrape.stdout.split(separator: "\n").first { $0.hasPrefix(name + "{") || $0.hasPrefix(name + " ") }
            .flatMap { Double($0.split(separator: " ").last ?? "") } ?? -1
    }

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
        let deadline = Date().addingTimeInterval(20)
        while try metric("understudy_sync_verified", port: backupMetrics) < verifiedAtRepair + 10 && Date() < deadline { usleep(20_000) }
        XCTAssertGreaterThanOrEqual(try metric("understudy_sync_verified", port: backupMetrics), verifiedAtRepair + 10, pair.backup.output)
        XCTAssertEqual(try metric("understudy_sync_verification_failures", port: backupMetrics), 0)
        XCTAssertEqual(try metric("understudy_sync_divergences", port: backupMetrics), 1, "only the injected fault differs")
        XCTAssertGreaterThanOrEqual(try metric("understudy_sync_repaired_blocks", port: backupMetrics), 4, "four corrupted spots")
        XCTAssertEqual(try metric("understudy_sync_divergences", port: primaryMetrics), 1)
        XCTAssertFalse(pair.primary.output.contains("backup lost"), pair.primary.output)
        load.stop()

        let setter = try Harness.run("redis-cli", ["-p", port, "SET", "after-the-repair", "kept"])
        XCTAssertEqual(setter.stdout.trimmingCharacters(in: .whitespacesAndNewlines), "OK")
        try pair.killPrimaryAndWaitForTakeover { port in (try? Harness.run("redis-cli", ["-p", "\(port)", "PING"]).stdout.hasPrefix("PONG")) ?? false }
        try pair.backup.waitFor("caught up with the primary's log; live")
        XCTAssertFalse(pair.backup.output.contains("replayed the log"), "an active backup goes live in place")
        let value = try Harness.run("redis-cli", ["-p", port, "GET", "after-the-repair"])
        XCTAssertEqual(value.stdout.trimmingCharacters(in: .whitespacesAndNewlines), "kept")
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
            let outcome = try Harness.run(Harness.binary, ["primary", kv, "--listen", "127.0.0.1:1", "--backup", "127.0.0.1:2"] + options)
            XCTAssertNotEqual(outcome.status, 0)
            XCTAssertTrue(outcome.stderr.contains(reason), "\(options): \(outcome.stderr)")
        }
    }
}
