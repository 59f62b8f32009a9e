import Foundation
import NIOPosix
@testable import UnderstudyReplication
import XCTest

/// The etcd client against a real etcd: absent keys, versioned puts and their conflicts, a race
/// of two contenders, prefixes, leases, and etcd refusing, silent or gone.
///
/// The tests are synchronous so that the etcd they start is owned from the main thread (which
/// ties it to the runner's life, see `ChildProcess`); the client's calls run through `awaited`.
final class EtcdClientTests: XCTestCase {
    private func client(
        _ endpoints: [String], requestTimeout: Duration = .seconds(1), responseBytesMax: Int = EtcdClient.defaultResponseBytesMax
    ) throws -> EtcdClient {
        EtcdClient(
            endpoints: try endpoints.map { try EtcdEndpoint.parse($0) }, group: MultiThreadedEventLoopGroup.singleton,
            requestTimeout: requestTimeout, responseBytesMax: responseBytesMax)
    }

    private func deadEndpoint() -> String { "http://127.0.0.1:\(Harness.freePort())" }

    func testGetOfAMissingKeyIsNil() throws {
        let etcd = try EtcdServer()
        let client = try client([etcd.endpoint])
        XCTAssertNil(try awaited { try await client.get("understudy/nothing-here") })
    }

    func testPutIfVersionCreatesConflictsAndUpdates() throws {
        let etcd = try EtcdServer()
        let client = try client([etcd.endpoint])
        let key = "understudy/role"

        XCTAssertEqual(try awaited { try await client.put(key, value: Array("a".utf8), ifVersion: 0) }, .put(newVersion: 1))
        guard case .conflict(let current) = try awaited({ try await client.put(key, value: Array("b".utf8), ifVersion: 0) }) else {
            return XCTFail("a second create of \(key) succeeded")
        }
        XCTAssertEqual(current?.key, key)
        XCTAssertEqual(current?.value, Array("a".utf8))
        XCTAssertEqual(current?.version, 1)

        XCTAssertEqual(try awaited { try await client.put(key, value: Array("b".utf8), ifVersion: 1) }, .put(newVersion: 2))
        let stored = try XCTUnwrap(try awaited { try await client.get(key) })
        XCTAssertEqual(stored.version, 2)
        XCTAssertEqual(stored.value, Array("b".utf8))
        XCTAssertEqual(stored.lease, 0)
        XCTAssertGreaterThan(stored.modRevision, 0)
    }

    func testOfTwoContendersAtOneVersionExactlyOneWins() throws {
        let etcd = try EtcdServer()
        let client = try client([etcd.endpoint])
        for round in 0..<5 {
            let key = "understudy/contended-\(round)"
            let version = try awaited {
                _ = try await client.put(key, value: Array("start".utf8), ifVersion: 0)
                _ = try await client.put(key, value: Array("start".utf8), ifVersion: 1)
                return try await client.get(key)?.version
            }
            XCTAssertEqual(version, 2)
            let (first, second) = try awaited {
                async let first = client.put(key, value: Array("first".utf8), ifVersion: 2)
                async let second = client.put(key, value: Array("second".utf8), ifVersion: 2)
                return try await (first, second)
            }
            switch (first, second) {
            case (.put(let newVersion), .conflict(let current)):
                XCTAssertEqual(newVersion, 3)
                XCTAssertEqual(current?.value, Array("first".utf8), "round \(round): the loser sees the winner's value")
                XCTAssertEqual(current?.version, 3)
            case (.conflict(let current), .put(let newVersion)):
                XCTAssertEqual(newVersion, 3)
                XCTAssertEqual(current?.value, Array("second".utf8), "round \(round): the loser sees the winner's value")
                XCTAssertEqual(current?.version, 3)
            default:
                XCTFail("round \(round): expected exactly one winner, got \(first) and \(second)")
            }
        }
    }

    func testListReturnsExactlyTheKeysUnderThePrefix() throws {
        let etcd = try EtcdServer()
        let client = try client([etcd.endpoint])
        let under = ["roles/a", "roles/b", "roles/c/d"]
        try awaited {
            for key in under + ["roles", "rolesX", "role", "other/a"] {
                _ = try await client.put(key, value: Array(key.utf8), ifVersion: 0)
            }
        }
        let listed = try awaited { try await client.list(prefix: "roles/") }
        XCTAssertEqual(listed.map(\.key), under)
        XCTAssertEqual(listed.map(\.value), under.map { Array($0.utf8) })
        XCTAssertEqual(try awaited { try await client.list(prefix: "nothing/") }, [])
    }

    func testTheRangeEndOfAPrefixIncrementsItsLastByteBelow0xFF() {
        XCTAssertEqual(EtcdClient.rangeEnd(ofPrefix: Array("a/".utf8)), Array("a0".utf8))
        XCTAssertEqual(EtcdClient.rangeEnd(ofPrefix: [0x61, 0xff, 0xff]), [0x62])
        XCTAssertEqual(EtcdClient.rangeEnd(ofPrefix: [0xff]), [0])
        XCTAssertEqual(EtcdClient.rangeEnd(ofPrefix: []), [0])
    }

    func testAKeyPutWithALeaseGoesWhenTheLeaseIsRevoked() throws {
        let etcd = try EtcdServer()
        let client = try client([etcd.endpoint])
        let key = "standbys/one"
        let lease = try awaited { try await client.grantLease(ttlSeconds: 30) }
        XCTAssertNotEqual(lease, 0)
        let created = try awaited { try await client.put(key, value: Array("here".utf8), ifVersion: 0, lease: lease) }
        XCTAssertEqual(created, .put(newVersion: 1))
        XCTAssertEqual(try awaited { try await client.get(key) }?.lease, lease)
        let remaining = try awaited { try await client.keepAlive(lease: lease) }
        XCTAssertTrue((1...30).contains(remaining), "remaining TTL \(remaining)")

        try awaited { try await client.revoke(lease: lease) }
        XCTAssertNil(try awaited { try await client.get(key) }, "the lease's key outlived it")
        XCTAssertEqual(try awaited { try await client.keepAlive(lease: lease) }, 0, "a revoked lease is kept alive")
        // Revoking what is already gone is done, not an error.
        try awaited { try await client.revoke(lease: lease) }
    }

    func testAnHTTPErrorIsABadResponseWithTheGatewaysMessage() throws {
        let etcd = try EtcdServer()
        let client = try client([etcd.endpoint])
        let error = try awaitedError { try await client.put("k", value: [], ifVersion: 0, lease: 12345) }
        guard case .badResponse(let reason) = error else { return XCTFail("expected a bad response, got \(error)") }
        XCTAssertTrue(reason.contains("HTTP 404") && reason.contains("requested lease not found"), reason)
    }

    func testAnAnswerOverTheBodyLimitIsRefused() throws {
        let etcd = try EtcdServer()
        let roomy = try client([etcd.endpoint])
        let tight = try client([etcd.endpoint], responseBytesMax: 512)
        let big = [UInt8](repeating: 0x42, count: 4096)
        XCTAssertEqual(try awaited { try await roomy.put("big", value: big, ifVersion: 0) }, .put(newVersion: 1))
        XCTAssertEqual(try awaited { try await roomy.get("big") }?.value, big)
        let error = try awaitedError { try await tight.get("big") }
        guard case .badResponse(let reason) = error else { return XCTFail("expected a bad response, got \(error)") }
        XCTAssertTrue(reason.contains("exceeds 512 bytes"), reason)
    }

    // MARK: Unreachable

    func testADeadFirstEndpointIsPassedOver() throws {
        let etcd = try EtcdServer()
        let client = try client([deadEndpoint(), etcd.endpoint])
        XCTAssertEqual(try awaited { try await client.put("k", value: [1], ifVersion: 0) }, .put(newVersion: 1))
        XCTAssertEqual(try awaited { try await client.get("k") }?.value, [1])
    }

    func testOnlyADeadEndpointIsUnreachableAndNamed() throws {
        let dead = deadEndpoint()
        let client = try client([dead])
        let error = try awaitedError { try await client.get("k") }
        guard case .unreachable = error else { return XCTFail("expected unreachable, got \(error)") }
        XCTAssertTrue(error.description.contains("\(dead): connection refused"), error.description)
    }

    func testAPausedEtcdIsUnreachableWithinTheTimeoutAndAnswersOnceResumed() throws {
        let etcd = try EtcdServer()
        let client = try client([etcd.endpoint], requestTimeout: .milliseconds(300))
        etcd.pause()
        let started = Date()
        let error = try awaitedError { try await client.get("k") }
        let elapsed = Date().timeIntervalSince(started)
        guard case .unreachable = error else { return XCTFail("expected unreachable, got \(error)") }
        XCTAssertTrue(error.description.contains("\(etcd.endpoint): timed out after 300 ms"), error.description)
        XCTAssertLessThan(elapsed, 3, "a request to a paused etcd took \(elapsed) s")
        etcd.resume()
        XCTAssertNil(try awaited { try await client.get("k") })
    }

    /// The endpoint that answered is tried first next time: after one request has waited out a
    /// paused first endpoint, the next goes straight to the live one.
    func testTheEndpointThatAnsweredIsTriedFirstNextTime() throws {
        let paused = try EtcdServer()
        let live = try EtcdServer()
        paused.pause()
        let client = try client([paused.endpoint, live.endpoint], requestTimeout: .seconds(1))
        let first = try timed { try awaited { try await client.get("k") } }
        XCTAssertNil(first.result)
        XCTAssertGreaterThanOrEqual(first.seconds, 1, "the paused endpoint was not tried first")
        let second = try timed { try awaited { try await client.get("k") } }
        XCTAssertNil(second.result)
        XCTAssertLessThan(second.seconds, 1, "the paused endpoint was tried again first")
    }

    func testEndpointListsParseAndBadPartsAreNamed() throws {
        XCTAssertEqual(
            try EtcdEndpoint.parseList("http://a:2379, b:1,http://[::1]:2380/"),
            [EtcdEndpoint(host: "a", port: 2379), EtcdEndpoint(host: "b", port: 1), EtcdEndpoint(host: "::1", port: 2380)])
        let bad: [(text: String, named: String)] = [
            ("", "no etcd endpoints"), ("http://h:notaport", "'notaport'"), ("https://h:1", "https is not supported"),
            ("ftp://h:1", "'ftp'"), ("h:0", "'0'"), ("h", "no port"), ("a:1,,b:2", "empty endpoint"), (":1", "no host"),
        ]
        for (text, named) in bad {
            XCTAssertThrowsError(try EtcdEndpoint.parseList(text), "'\(text)' parsed") { error in
                XCTAssertTrue("\(error)".contains(named), "'\(text)': \(error)")
            }
        }
    }

    // MARK: Helpers

    private func timed<T>(_ body: () throws -> T) rethrows -> (result: T, seconds: Double) {
        let started = Date()
        let result = try body()
        return (result, Date().timeIntervalSince(started))
    }

    /// The error `operation` ends with, which must be an `EtcdError`.
    private func awaitedError<T: Sendable>(_ operation: @escaping @Sendable () async throws -> T) throws -> EtcdError {
        do {
            let value = try awaited(operation)
            throw HarnessError.timedOut("expected an etcd error, got \(value)")
        } catch let error as EtcdError {
            return error
        }
    }
}

/// Runs `operation` to completion from a synchronous test, which waits at most `seconds`.
@discardableResult
func awaited<T: Sendable>(seconds: Double = 30, _ operation: @escaping @Sendable () async throws -> T) throws -> T {
    let outcome = AwaitedOutcome<T>()
    let done = DispatchSemaphore(value: 0)
    Task {
        do { outcome.set(.success(try await operation())) } catch { outcome.set(.failure(error)) }
        done.signal()
    }
    guard done.wait(timeout: .now() + seconds) == .success, let result = outcome.result else {
        throw HarnessError.timedOut("an etcd call did not finish within \(Int(seconds)) s")
    }
    return try result.get()
}

private final class AwaitedOutcome<T: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: Result<T, Error>?

    var result: Result<T, Error>? { lock.withLock { stored } }
    func set(_ result: Result<T, Error>) { lock.withLock { stored = result } }
}
