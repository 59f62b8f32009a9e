import Logging
import UnderstudyCore

/// A machine's standbys, found through etcd (DESIGN.md, "One primary"): each backup registers
/// the address it listens for a primary on under `/understudy/standbys/NAME/`, with a lease it
/// keeps alive, so a standby that dies or is cut off drops out by itself within the lease's TTL.
/// Whoever holds the primary role lists them, oldest first, and seeds one.
public struct StandbyRegistry: Sendable {
    let client: EtcdClient
    public let prefix: String
    /// Short, so a dead standby is not tried for long; renewed three times within it.
    public static let leaseSeconds: Int64 = 3

    public init(client: EtcdClient, machine: String) {
        self.client = client
        prefix = "/understudy/standbys/\(machine)/"
    }

    /// The registered standbys' addresses, oldest registration first; ones that do not parse are
    /// skipped (a registry is read, never trusted to be well formed).
    public func standbys() async throws(EtcdError) -> [ServiceAddress] {
        try await client.list(prefix: prefix).sorted { $0.modRevision < $1.modRevision }.compactMap {
            try? ServiceAddress(parsing: String(decoding: $0.value, as: UTF8.self))
        }
    }

    /// Registers `address` under `identity` and keeps it registered until `withdraw`: a task
    /// renews the lease, and registers anew if it ever expired (etcd was away longer than the TTL).
    public func register(_ address: ServiceAddress, identity: String, logger: Logger) -> StandbyRegistration {
        StandbyRegistration(registry: self, key: prefix + identity, address: address, logger: logger)
    }
}

public final class StandbyRegistration: Sendable {
    private let renewing: Task<Void, Never>
    private let lease = LeaseHolder()

    init(registry: StandbyRegistry, key: String, address: ServiceAddress, logger: Logger) {
        let lease = self.lease
        renewing = Task {
            var registered = false
            while !Task.isCancelled {
                do {
                    if let id = lease.id, try await registry.client.keepAlive(lease: id) > 0 {
                        // renewed
                    } else {
                        let id = try await registry.client.grantLease(ttlSeconds: StandbyRegistry.leaseSeconds)
                        lease.id = id
                        _ = try await registry.client.put(key, value: Array(address.description.utf8), ifVersion: 0, lease: id)
                        if !registered { logger.notice("registered as a standby", metadata: ["key": "\(key)", "address": "\(address)"]) }
                        registered = true
                    }
                } catch {
                    logger.warning("cannot renew the standby registration; retrying", metadata: ["reason": "\(error)"])
                }
                try? await Task.sleep(for: .milliseconds(Int(StandbyRegistry.leaseSeconds) * 1000 / 3))
            }
            if let id = lease.id { try? await registry.client.revoke(lease: id) }
        }
    }

    /// Stops renewing and revokes the lease (its key goes with it); returns once it is done.
    public func withdraw() async {
        renewing.cancel()
        await renewing.value
    }
}

/// The lease in use, shared by the renewing task and nothing else after it ends.
private final class LeaseHolder: @unchecked Sendable {
    var id: Int64?
}
