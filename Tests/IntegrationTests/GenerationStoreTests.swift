import Foundation
import NIOPosix
import UnderstudyReplication
import XCTest

/// The generation record on a real etcd: the generation is the key's version, of two contenders
/// for the next one exactly one wins and the loser is shown the winner, and a key that does not
/// hold a record the store wrote is refused as unreadable rather than taken for one.
final class GenerationStoreTests: XCTestCase {
    private func store(_ etcd: EtcdServer, machine: String = "m") throws -> EtcdGenerationStore {
        let client = EtcdClient(endpoints: [try EtcdEndpoint.parse(etcd.endpoint)], group: MultiThreadedEventLoopGroup.singleton)
        return EtcdGenerationStore(client: client, machine: machine)
    }

    func testTheNextGenerationGoesToExactlyOneContender() throws {
        let etcd = try EtcdServer()
        let store = try store(etcd)
        XCTAssertNil(try awaited { try await store.read() })
        let first = GenerationRecord.next(after: 0, holder: "p", standing: .alone)
        XCTAssertEqual(try awaited { try await store.write(first, ifGeneration: 0) }, .won)
        let protected = GenerationRecord.next(after: 1, holder: "p", standing: .protected, backup: "b")
        XCTAssertEqual(try awaited { try await store.write(protected, ifGeneration: 1) }, .won)
        XCTAssertEqual(try awaited { try await store.read() }, protected)

        // The backup and the primary both claim generation 3 from 2.
        let backup = GenerationRecord.next(after: 2, holder: "b", standing: .alone)
        let primary = GenerationRecord.next(after: 2, holder: "p", standing: .alone)
        let (a, b) = try awaited {
            async let a = store.write(backup, ifGeneration: 2)
            async let b = store.write(primary, ifGeneration: 2)
            return try await (a, b)
        }
        let winner = try XCTUnwrap(try awaited { try await store.read() })
        XCTAssertEqual(winner.generation, 3)
        XCTAssertEqual([a, b].filter { $0 == .won }.count, 1, "\(a), \(b)")
        XCTAssertTrue([a, b].contains(.lost(current: winner)), "the loser is not shown the winner: \(a), \(b)")
        // A stale writer (it saw generation 1) loses to what is there now.
        XCTAssertEqual(
            try awaited { try await store.write(.next(after: 1, holder: "old", standing: .alone), ifGeneration: 1) }, .lost(current: winner))
    }

    func testAKeyWrittenByHandIsUnreadableNotARecord() throws {
        let etcd = try EtcdServer()
        let store = try store(etcd, machine: "hand")
        let client = store.client
        _ = try awaited { try await client.put("/understudy/machines/hand", value: Array("not json".utf8), ifVersion: 0) }
        XCTAssertThrowsError(try awaited { try await store.read() }) { error in
            XCTAssertTrue("\(error)".contains("does not hold a generation record"), "\(error)")
        }
        // A record whose generation is not the key's version was not written by a store.
        let record = try JSONEncoder().encode(GenerationRecord(generation: 7, holder: "x", standing: .alone))
        _ = try awaited { try await client.put("/understudy/machines/hand", value: Array(record), ifVersion: 1) }
        XCTAssertThrowsError(try awaited { try await store.read() }) { error in
            XCTAssertTrue("\(error)".contains("says generation 7 at version 2"), "\(error)")
        }
    }

    func testAStoppedEtcdIsUnreachableNotALoss() throws {
        let etcd = try EtcdServer()
        let store = try store(etcd)
        etcd.stop()
        XCTAssertThrowsError(try awaited { try await store.write(.next(after: 0, holder: "p", standing: .alone), ifGeneration: 0) }) { error in
            guard case .unreachable = error as? GenerationStoreError else { return XCTFail("\(error)") }
        }
    }
}
