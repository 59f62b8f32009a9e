import Foundation
import XCTest

/// The key-value guest under `understudy run`, driven by Debian's redis-cli and redis-benchmark.
final class KVGuestTests: XCTestCase {
    private func benchmark(_ port: UInt16, _ arguments: [String]) throws -> String {
        let outcome = try Harness.run("redis-benchmark", ["-p", "\(port)", "-q"] + arguments)
        XCTAssertEqual(outcome.status, 0, outcome.stderr)
        return outcome.stdout
    }

    func testRedisCLIReadsWhatItWrote() throws {
        let server = try ServedGuest("kv")
        XCTAssertEqual(try Harness.redisCLI(server.port, "set", "greeting", "hello"), "OK")
        XCTAssertEqual(try Harness.redisCLI(server.port, "get", "greeting"), "hello")
        XCTAssertEqual(try Harness.redisCLI(server.port, "incr", "visits"), "1")
        XCTAssertEqual(try Harness.redisCLI(server.port, "incrby", "visits", "41"), "42")
        XCTAssertEqual(try Harness.redisCLI(server.port, "lpush", "queue", "a", "b"), "2")
        XCTAssertEqual(try Harness.redisCLI(server.port, "lpop", "queue"), "b")
        XCTAssertEqual(try Harness.redisCLI(server.port, "dbsize"), "3")
        XCTAssertTrue(try Harness.redisCLI(server.port, "incr", "greeting").contains("not an integer"))
    }

    /// redis-benchmark runs unmodified; its INCR hits one key, so the key's value counts the
    /// acknowledged requests exactly, pipelined or not.
    func testRedisBenchmarkRunsUnmodifiedAndEveryIncrLands() throws {
        let server = try ServedGuest("kv")
        let report = try benchmark(server.port, ["-t", "ping,set,get,incr,lpush,lpop,mset", "-n", "2000"])
        for test in ["PING_INLINE", "PING_MBULK", "SET", "GET", "INCR", "LPUSH", "LPOP", "MSET"] {
            XCTAssertTrue(report.contains("\(test)") && report.contains("requests per second"), "\(test) missing in:\n\(report)")
        }
        XCTAssertEqual(try Harness.redisCLI(server.port, "get", "counter:__rand_int__"), "2000")
        _ = try benchmark(server.port, ["-t", "incr", "-n", "3200", "-P", "16", "-c", "8"])
        XCTAssertEqual(try Harness.redisCLI(server.port, "get", "counter:__rand_int__"), "5200")
    }

    func testTwoHundredConcurrentClients() throws {
        let server = try ServedGuest("kv")
        _ = try benchmark(server.port, ["-t", "incr", "-n", "4000", "-c", "200"])
        XCTAssertEqual(try Harness.redisCLI(server.port, "get", "counter:__rand_int__"), "4000")
    }

    /// A guest blocked in poll waits in the kernel: an idle machine's threads all sleep, and
    /// none wakes. A poll loop that never blocks would be seen running; one with a short
    /// timeout would wake hundreds of times. Counted wakeups, not CPU time: a loaded machine
    /// makes neither more likely.
    func testIdleGuestSleepsInTheKernel() throws {
        let server = try ServedGuest("kv")
        XCTAssertEqual(try Harness.redisCLI(server.port, "ping"), "PONG")
        let tasks = "/proc/\(server.pid)/task"
        func threads() throws -> [String] { try FileManager.default.contentsOfDirectory(atPath: tasks) }
        func wakeups() throws -> Int {
            try threads().reduce(0) { total, thread in
                let status = (try? String(contentsOfFile: "\(tasks)/\(thread)/status", encoding: .utf8)) ?? ""
                let line = status.split(separator: "\n").first { $0.hasPrefix("voluntary_ctxt_switches:") }
                return total + (line.flatMap { Int($0.split(separator: "\t").last ?? "") } ?? 0)
            }
        }
        usleep(500_000)  // let the reply's connection close settle
        let before = try wakeups()
        sleep(2)
        XCTAssertLessThanOrEqual(try wakeups() - before, 5, "an idle machine woke up")
        for thread in try threads() {
            let stat = try String(contentsOfFile: "\(tasks)/\(thread)/stat", encoding: .utf8)
            let state = stat[stat.range(of: ") ")!.upperBound...].prefix(1)
            XCTAssertEqual(state, "S", "thread \(thread) of an idle machine is not asleep: \(stat)")
        }
    }

    /// Unwinding and rewinding the guest's stack at every wait must not change a single reply.
    func testSuspendingAtEveryBlockChangesNothing() throws {
        let server = try ServedGuest("kv", options: ["--suspend-at-every-block"])
        _ = try benchmark(server.port, ["-t", "set,incr", "-n", "2000", "-c", "20"])
        XCTAssertEqual(try Harness.redisCLI(server.port, "get", "counter:__rand_int__"), "2000")
        XCTAssertEqual(try Harness.redisCLI(server.port, "set", "k", "v"), "OK")
        XCTAssertEqual(try Harness.redisCLI(server.port, "get", "k"), "v")
    }
}
