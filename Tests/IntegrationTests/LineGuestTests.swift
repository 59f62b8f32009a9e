import Foundation
import XCTest

/// The bank, echo and dirty guests over real TCP from concurrent clients.
final class LineGuestTests: XCTestCase {
    func testBankConservesMoneyUnderConcurrentTransfers() throws {
        let server = try ServedGuest("bank", guestArguments: ["50", "1000"])
        let clients = 8
        let transfersPerClient = 60
        let port = server.port
        let okCount = LockedCounter()
        let failures = LockedCounter()
        DispatchQueue.concurrentPerform(iterations: clients) { worker in
            do {
                let client = try LineClient(port: port)
                var random = SystemRandomNumberGenerator()
                for _ in 0..<transfersPerClient {
                    let from = Int.random(in: 0..<50, using: &random)
                    let to = Int.random(in: 0..<50, using: &random)
                    let reply = try client.request("TRANSFER \(from) \(to) \(Int.random(in: 1...300, using: &random))")
                    if reply.hasPrefix("OK ") { okCount.add() } else if reply != "ERR insufficient" { failures.add() }
                }
            } catch {
                failures.add()
            }
        }
        XCTAssertEqual(failures.value, 0)
        let audit = try LineClient(port: server.port).request("AUDIT")
        XCTAssertEqual(audit, "AUDIT 50000 \(okCount.value)")
        XCTAssertGreaterThan(okCount.value, 0)
    }

    func testEchoReturnsEveryLineToItsOwnClient() throws {
        let server = try ServedGuest("echo")
        let port = server.port
        let mismatches = LockedCounter()
        DispatchQueue.concurrentPerform(iterations: 16) { worker in
            do {
                let client = try LineClient(port: port)
                for line in 0..<40 {
                    let text = "client \(worker) line \(line) " + String(repeating: "z", count: line * 13)
                    if try client.request(text) != text { mismatches.add() }
                }
            } catch {
                mismatches.add()
            }
        }
        XCTAssertEqual(mismatches.value, 0)
    }

    func testDirtyGuestWritesPagesAtItsRate() throws {
        let server = try ServedGuest("dirty", guestArguments: ["500", "8"])
        let client = try LineClient(port: server.port)
        func written(_ status: String) throws -> Int {
            try XCTUnwrap(
                status.split(separator: " ").first { $0.hasPrefix("pages_written=") }.flatMap { Int($0.dropFirst("pages_written=".count)) },
                "no pages_written in '\(status)'")
        }
        let first = try client.request("STATUS")
        XCTAssertTrue(first.contains("working_set_mib=8"), first)
        // It writes on its own, with no request to prompt it: the count grows between two STATUS.
        try Harness.waitUntil("pages written after '\(first)'") { try written(try client.request("STATUS")) > written(first) }
    }
}
