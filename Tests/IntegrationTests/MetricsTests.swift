import Foundation
import XCTest

/// `--metrics HOST:PORT`: the checkpoint pause and pages, read by curl in Prometheus format.
final class MetricsTests: XCTestCase {
    private func value(_ name: String, in text: String) -> Double? {
        text.split(separator: "\n").first { $0.hasPrefix(name + " ") }.flatMap { Double($0.split(separator: " ")[1]) }
    }

    func testCheckpointPausesAreServedInPrometheusFormat() throws {
        let metricsPort = Harness.freePort()
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("understudy-metrics-\(UUID().uuidString)")
        let served = try ServedGuest(
            "kv", options: ["--record", directory.path, "--checkpoint-every", "50ms", "--metrics", "127.0.0.1:\(metricsPort)"])
        XCTAssertEqual(try Harness.run("redis-benchmark", ["-p", "\(served.port)", "-t", "set", "-n", "2000", "-q"]).status, 0)
        usleep(300_000)
        let scrape = try Harness.run("curl", ["-sf", "http://127.0.0.1:\(metricsPort)/metrics"])
        XCTAssertEqual(scrape.status, 0, scrape.stderr)
        let pauses = value("understudy_suspension_pause_count", in: scrape.stdout) ?? 0
        let checkpoints = value("understudy_checkpoint_pages_count", in: scrape.stdout) ?? 0
        XCTAssertGreaterThan(checkpoints, 2, scrape.stdout)
        // Every checkpoint is one suspension; the scrape may fall between the two records.
        XCTAssertLessThanOrEqual(abs(pauses - checkpoints), 1, scrape.stdout)
        XCTAssertGreaterThan(value("understudy_suspension_pause_sum", in: scrape.stdout) ?? 0, 0, scrape.stdout)
        XCTAssertGreaterThan(value("understudy_checkpoint_pages_sum", in: scrape.stdout) ?? 0, checkpoints, "SETs dirty pages")
        let missing = try Harness.run("curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:\(metricsPort)/other"])
        XCTAssertEqual(missing.stdout, "404")
    }
}
