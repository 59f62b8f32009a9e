import Foundation
import XCTest

/// `--metrics HOST:PORT`: the checkpoint pause and pages, read by curl in Prometheus format.
final class MetricsTests: XCTestCase {
    func testCheckpointPausesAreServedInPrometheusFormat() throws {
        let metricsPort = Harness.freePort()
        let directory = Harness.scratch("understudy-metrics")
        let served = try ServedGuest(
            "kv", options: ["--record", directory.path, "--checkpoint-every", "50ms", "--metrics", "127.0.0.1:\(metricsPort)"])
        XCTAssertEqual(try Harness.run("redis-benchmark", ["-p", "\(served.port)", "-t", "set", "-n", "2000", "-q"]).status, 0)
        // Checkpoints keep coming every 50 ms; wait for a few rather than for a fixed time.
        try Harness.waitUntil("three checkpoints counted") {
            ((try? MetricsScrape(port: metricsPort).value("understudy_checkpoint_pages_count")) ?? 0) > 2
        }
        let scrape = try MetricsScrape(port: metricsPort)
        let pauses = try scrape.value("understudy_suspension_pause_count")
        let checkpoints = try scrape.value("understudy_checkpoint_pages_count")
        // Every checkpoint is one suspension; the scrape may fall between the two records.
        XCTAssertLessThanOrEqual(abs(pauses - checkpoints), 1, scrape.text)
        XCTAssertGreaterThan(try scrape.value("understudy_suspension_pause_sum"), 0, scrape.text)
        XCTAssertGreaterThan(try scrape.value("understudy_checkpoint_pages_sum"), checkpoints, "SETs dirty pages")
        let missing = try Harness.run("curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:\(metricsPort)/other"])
        XCTAssertEqual(missing.stdout, "404")
    }
}
