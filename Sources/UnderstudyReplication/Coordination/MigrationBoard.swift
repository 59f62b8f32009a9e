import Foundation

/// A planned migration (LLM's own name for it), asked for and answered through etcd:
/// `/understudy/migrations/NAME` holds the latest request and, once it is over, how it ended.
/// `understudy migrate` asks; the primary it names hands its role to its seeded backup; the
/// backup, serving, answers.
public struct MigrationRequest: Codable, Sendable, Equatable {
    public enum State: String, Codable, Sendable {
        case asked
        /// The backup serves; `downtimeMillis` from the primary's last reply to the first the
        /// backup could give (the guest frozen on one, live on the other).
        case done
        case failed
    }

    public var id: String
    /// The generation of the primary asked: another (a later one) ignores the request.
    public var generation: UInt64
    public var state: State
    public var downtimeMillis: Double?
    /// Who serves now (done), or why not (failed).
    public var detail: String?

    public init(id: String, generation: UInt64, state: State = .asked, downtimeMillis: Double? = nil, detail: String? = nil) {
        self.id = id
        self.generation = generation
        self.state = state
        self.downtimeMillis = downtimeMillis
        self.detail = detail
    }
}

public struct MigrationBoard: Sendable {
    let client: EtcdClient
    public let key: String

    public init(client: EtcdClient, machine: String) {
        self.client = client
        key = "/understudy/migrations/\(machine)"
    }

    /// The latest request, nil if there is none (or it does not parse).
    public func read() async throws(EtcdError) -> MigrationRequest? {
        guard let found = try await client.get(key) else { return nil }
        return try? JSONDecoder().decode(MigrationRequest.self, from: Data(found.value))
    }

    /// Writes `request` over whatever is there.
    public func post(_ request: MigrationRequest) async throws(EtcdError) {
        let bytes = Array((try? JSONEncoder().encode(request)) ?? Data())
        while true {
            let version = try await client.get(key)?.version ?? 0
            if case .put = try await client.put(key, value: bytes, ifVersion: version) { return }
        }
    }
}
