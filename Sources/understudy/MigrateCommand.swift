import ArgumentParser
import Foundation
import NIOPosix
import UnderstudyReplication

/// `understudy migrate NAME --etcd …`: a planned migration. The machine's primary stops its
/// guest, hands everything to its seeded backup, and the backup wins the next generation and
/// serves; the old primary gives up the service IP and exits.
struct MigrateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "migrate",
        abstract: "Hand a protected machine's primary role to its backup (a planned migration), and print the downtime.")

    @Argument(help: "The machine's --name.")
    var name: String

    @Option(name: .long, help: "etcd's client URLs, as the machine's primary and backup were given them.")
    var etcd: String

    @Option(name: .long, help: "How long to wait for the backup to serve, like 30s (default 30s).")
    var timeout: DurationArgument?

    func validate() throws {
        try CoordinationOptions.check(name: name)
        do { _ = try EtcdEndpoint.parseList(etcd) } catch { throw ValidationError("--etcd \(error)") }
    }

    func run() throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let client = EtcdClient(endpoints: try EtcdEndpoint.parseList(etcd), group: group)
        let store = EtcdGenerationStore(client: client, machine: name)
        let board = MigrationBoard(client: client, machine: name)
        let deadline = ContinuousClock.now + (timeout?.duration ?? .seconds(30))
        do {
            guard let record = try blocking(on: group, { try await store.read() }) else {
                throw CommandError("machine \(name) has no generation in etcd: nothing serves it")
            }
            guard record.standing == .protected, let backup = record.backup else {
                throw CommandError("machine \(name) is \(record): no backup protects it, so there is nothing to hand it to")
            }
            let request = MigrationRequest(id: String(UInt64.random(in: 0...UInt64.max), radix: 16), generation: record.generation)
            try blocking(on: group) { try await board.post(request) }
            say("asked the primary of generation \(record.generation) (\(record.holder)) to hand \(name) over to \(backup)")
            var sawHandover = false
            while ContinuousClock.now < deadline {
                let answer = try blocking(on: group) { try await board.read() }
                if let answer, answer.id == request.id, answer.state != .asked {
                    guard answer.state == .done else { throw CommandError("the migration failed: \(answer.detail ?? "no reason given")") }
                    let downtime = answer.downtimeMillis.map { String(format: "%.1f", $0) } ?? "?"
                    say("\(answer.detail ?? "migrated"); downtime \(downtime) ms")
                    return
                }
                if !sawHandover, let now = try blocking(on: group, { try await store.read() }), now.generation > record.generation {
                    sawHandover = true
                    say("the backup holds generation \(now.generation); waiting for it to serve")
                }
                Thread.sleep(forTimeInterval: 0.02)
            }
            throw CommandError("the migration of \(name) did not finish within \((timeout?.duration ?? .seconds(30)).milliseconds) ms")
        } catch {
            throw failure(error)
        }
    }

    private func say(_ line: String) { FileHandle.standardError.write(Data("migrate: \(line)\n".utf8)) }
}
