import Foundation

/// The generation record on etcd (DESIGN.md, "One primary"): one key per machine,
/// `/understudy/machines/NAME`, holding the record as JSON. The generation *is* the key's etcd
/// version (every put raises it by one, and a missing key has version 0), so "write if the
/// generation is still G" is one transaction comparing the version, and the fencing token needs
/// no read first.
public struct EtcdGenerationStore: GenerationStore {
    public let client: EtcdClient
    public let key: String

    public init(client: EtcdClient, machine name: String) {
        self.client = client
        key = "/understudy/machines/\(name)"
    }

    public var location: String { "etcd \(client.endpoints.map(\.description).joined(separator: ",")) key \(key)" }

    public func read() async throws(GenerationStoreError) -> GenerationRecord? {
        let found: EtcdKeyValue?
        do {
            found = try await client.get(key)
        } catch {
            throw .unreachable("\(error)")
        }
        return try found.map(Self.record)
    }

    public func write(_ record: GenerationRecord, ifGeneration expected: UInt64) async throws(GenerationStoreError) -> GenerationWrite {
        precondition(record.generation == expected + 1, "a generation follows the one it replaces")
        let value: [UInt8]
        do {
            value = Array(try JSONEncoder().encode(record))
        } catch {
            preconditionFailure("a generation record always encodes: \(error)")
        }
        let outcome: EtcdClient.PutOutcome
        do {
            outcome = try await client.put(key, value: value, ifVersion: Int64(expected))
        } catch {
            throw .unreachable("\(error)")
        }
        switch outcome {
        case .put(let version):
            guard version == Int64(record.generation) else {
                throw .unreadable("etcd numbered the write \(version), not \(record.generation)")
            }
            return .won
        case .conflict(let current): return .lost(current: try current.map(Self.record))
        }
    }

    /// The record in `found`, whose generation must be the key's version.
    static func record(_ found: EtcdKeyValue) throws(GenerationStoreError) -> GenerationRecord {
        let record: GenerationRecord
        do {
            record = try JSONDecoder().decode(GenerationRecord.self, from: Data(found.value))
        } catch {
            throw .unreadable("\(found.key) does not hold a generation record: \(error)")
        }
        guard record.generation == UInt64(found.version) else {
            throw .unreadable("\(found.key) says generation \(record.generation) at version \(found.version) (was it written by hand?)")
        }
        return record
    }
}
