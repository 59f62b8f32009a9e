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

    /// redis-py 8 (setup installs it into .build-python) speaks RESP3 unless told otherwise: its
    /// HELLO 3 is answered as Redis answers it, and both protocols read back what they wrote
    /// (RESP3's null, its map for CONFIG GET).
    func testRedisPyInBothProtocols() throws {
        let server = try ServedGuest("kv")
        let script = """
            import sys, redis
            assert redis.__version__.startswith("8."), redis.__version__
            for protocol in (None, 2, 3):
                r = redis.Redis(port=\(server.port), protocol=protocol) if protocol else redis.Redis(port=\(server.port))
                key = "p%s" % protocol
                print(protocol, r.set(key, "v"), r.get(key), r.incr(key + ":n"), r.get("missing"), r.rpush(key + ":l", "a"),
                      r.lpop(key + ":l"), r.lpop(key + ":l"), r.config_get("save"))
            print(redis.Redis(port=\(server.port)).connection_pool.get_connection().handshake_metadata[b"proto"])
            """
        let outcome = try Harness.run(
            "python3", ["-c", script], environment: ["PYTHONPATH": Harness.root.appendingPathComponent(".build-python").path], timeoutSeconds: 60)
        XCTAssertEqual(outcome.status, 0, outcome.stderr)
        XCTAssertEqual(
            outcome.stdout.split(separator: "\n").map(String.init),
            [
                "None True b'v' 1 None 1 b'a' None {'save': ''}", "2 True b'v' 1 None 1 b'a' None {'save': ''}",
                "3 True b'v' 1 None 1 b'a' None {'save': ''}", "3",
            ], outcome.stderr)
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
