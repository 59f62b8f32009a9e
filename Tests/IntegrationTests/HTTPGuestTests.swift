import XCTest

/// The HTTP guest under `understudy run`, driven by curl and wrk.
final class HTTPGuestTests: XCTestCase {
    private func curl(_ arguments: String...) throws -> String {
        let outcome = try Harness.run("curl", ["-sS", "--max-time", "30"] + arguments)
        XCTAssertEqual(outcome.status, 0, outcome.stderr)
        return outcome.stdout
    }

    func testCurlPageAndCounter() throws {
        let server = try ServedGuest("http")
        let base = "http://127.0.0.1:\(server.port)"
        XCTAssertTrue(try curl("\(base)/").lowercased().contains("<html"))
        XCTAssertEqual(try curl("-X", "POST", "\(base)/counter").trimmingCharacters(in: .whitespacesAndNewlines), "1")
        XCTAssertEqual(try curl("-X", "POST", "\(base)/counter").trimmingCharacters(in: .whitespacesAndNewlines), "2")
        XCTAssertEqual(try curl("\(base)/counter").trimmingCharacters(in: .whitespacesAndNewlines), "2")
        XCTAssertEqual(try curl("-o", "/dev/null", "-w", "%{http_code}", "\(base)/missing"), "404")
    }

    func testWrkKeepAliveWithoutErrors() throws {
        let server = try ServedGuest("http")
        let outcome = try Harness.run("wrk", ["-t1", "-c8", "-d2s", "http://127.0.0.1:\(server.port)/counter"])
        XCTAssertEqual(outcome.status, 0, outcome.stderr)
        XCTAssertTrue(outcome.stdout.contains("requests in"), outcome.stdout)
        XCTAssertFalse(outcome.stdout.contains("Socket errors"), outcome.stdout)
        XCTAssertFalse(outcome.stdout.contains("Non-2xx"), outcome.stdout)
    }
}
