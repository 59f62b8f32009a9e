import ArgumentParser
import Foundation
import Logging
import NIOCore
import UnderstudyReplication

/// `--name` and `--etcd`, shared by primary and backup: where the machine's generation lives
/// (DESIGN.md, "One primary"). Without `--etcd` nothing fences a pause or a partition, and both
/// processes say so once at start.
struct CoordinationOptions: ParsableArguments {
    @Option(name: .long, help: "The protected machine's name: its key in etcd, and what the backup checks the primary's hello against (primary default: the module's file name; a backup with --etcd needs it). Letters, digits, '.', '_' and '-'.")
    var name: String?

    @Option(name: .long, help: "etcd's client URLs, like http://127.0.0.1:2379[,http://…]: the machine's generation is kept there, so that of a primary and a backup that cannot reach each other exactly one serves.")
    var etcd: String?

    func validate() throws {
        if let name { try Self.check(name: name) }
        if let etcd {
            do { _ = try EtcdEndpoint.parseList(etcd) } catch { throw ValidationError("--etcd \(error)") }
        }
    }

    static func check(name: String) throws {
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
        guard (1...128).contains(name.count), name.allSatisfy(allowed.contains), name != ".", name != ".." else {
            throw ValidationError("--name '\(name)' must be 1 to 128 letters, digits, '.', '_' or '-'")
        }
    }

    /// The store the role is decided in: etcd, or nowhere (said once, as a warning).
    func store(machine: String, group: EventLoopGroup, logger: Logger) throws -> any GenerationStore {
        guard let etcd else {
            logger.warning("no --etcd: nothing fences a pause or a partition; a paused or cut-off primary and its backup may both serve")
            return UnfencedGenerationStore()
        }
        return EtcdGenerationStore(client: EtcdClient(endpoints: try EtcdEndpoint.parseList(etcd), group: group), machine: machine)
    }

    /// Where planned migrations of the machine are asked for (nil without etcd).
    func migrationBoard(machine: String, group: EventLoopGroup) -> MigrationBoard? {
        client(group: group).map { MigrationBoard(client: $0, machine: machine) }
    }

    /// Where the machine's standbys register (nil without etcd).
    func standbyRegistry(machine: String, group: EventLoopGroup) -> StandbyRegistry? {
        client(group: group).map { StandbyRegistry(client: $0, machine: machine) }
    }

    /// `validate` has checked the endpoints parse.
    private func client(group: EventLoopGroup) -> EtcdClient? {
        guard let etcd, let endpoints = try? EtcdEndpoint.parseList(etcd) else { return nil }
        return EtcdClient(endpoints: endpoints, group: group)
    }

    /// A name no other process shares, so a holder knows its own write when its answer was lost.
    static func identity(role: String) -> String {
        "\(role) on \(ProcessInfo.processInfo.hostName) pid \(getpid()) \(String(UInt32.random(in: 0...UInt32.max), radix: 16))"
    }
}

/// Runs `body` to completion from a thread that is not an event loop (the command's main thread).
func blocking<T: Sendable>(on group: EventLoopGroup, _ body: @escaping @Sendable () async throws -> T) throws -> T {
    try group.next().makeFutureWithTask(body).wait()
}
