import ArgumentParser
import Foundation
import Logging
import NIOCore
import NIOPosix
import UnderstudyCore
import UnderstudyMachine
import UnderstudyProtection
import UnderstudyReplication

struct BackupCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backup",
        abstract: "Protect a primary's machine, and take over its service when the primary dies.",
        discussion: """
            Waits for a primary on --replication (mutual TLS with --tls-cert, --tls-key and --tls-ca, \
            unless --insecure-replication: a peer without a certificate of that authority is refused \
            during the TLS handshake). The primary sends its prepared module and configuration \
            (with its protection flags: --epoch, --checkpoint-interval, --sync-every, --block-size, \
            --verify-syncs, --ack-timeout, --fence-timeout), a full checkpoint, then what its mode sends: checkpoints every epoch (remus), the \
            event log and a checkpoint every interval (llm), or the event log and sync points \
            (active: this process runs the machine too, following the log, and the two compare \
            their states at each sync). Each message is checked whole before it is applied. When \
            the primary's connection ends without a goodbye, or it is silent for \
            --heartbeat-timeout, and the primary had recorded this backup as protecting it, this \
            process claims the machine's next generation in --etcd; having won it, it takes over: \
            it restores the latest checkpoint (and in llm replays the log after it), or in active \
            lets its running machine finish the log; then it listens on --listen and serves, a primary \
            of the machine in the same mode with its old primary's protection flags, seeding the \
            standbys registered for --name in --etcd as they come. Having \
            lost it (the primary lives on and won it), it drops its copy and waits to be seeded \
            again; while etcd does not answer, it keeps trying and does not serve. Without --etcd \
            it takes over at once, and nothing fences a primary that was only paused or cut off. \
            Connections open at the failover close; clients reconnect.
            """
    )

    @Option(name: .long, help: "HOST:PORT to accept the primary's replication connection on.")
    var replication: String

    @Option(name: .long, help: "HOST:PORT the service listens on after a takeover, as many as the primary's --listen.")
    var listen: [String] = []

    @OptionGroup var heartbeat: HeartbeatOptions

    @Option(name: .long, help: ArgumentHelp("Test only: corrupt this backup's memory at active sync N, before comparing.", visibility: .hidden))
    var injectCorruptionAtSync: UInt64?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Test only: after-module (the seed never completes) or after-seed: from then on handle and acknowledge nothing, while still heartbeating; before-taking-over: at a handover, win the generation and close the connection instead of saying so.",
            visibility: .hidden))
    var injectStall: BackupService.StallPoint?

    @OptionGroup var security: ReplicationSecurityOptions

    @OptionGroup var serviceIP: ServiceIPOptions

    @OptionGroup var coordination: CoordinationOptions

    @OptionGroup var metrics: MetricsOption

    @OptionGroup var engine: EngineOption

    @OptionGroup var logging: LoggingOptions

    func validate() throws {
        _ = try ServiceAddress.listenAddresses(listen)
        _ = try replicationAddress()
        _ = try heartbeat.timing()
        if coordination.etcd != nil && coordination.name == nil {
            throw ValidationError("--etcd needs --name: the machine whose generation this backup may claim")
        }
    }

    private func replicationAddress() throws -> ServiceAddress {
        do { return try ServiceAddress(parsing: replication) } catch { throw ValidationError("--replication \(error)") }
    }

    func run() throws {
        let logger = logging.bootstrap(label: "understudy.backup")
        try engine.choose()
        let addresses = try ServiceAddress.listenAddresses(listen)
        let endpoint: MetricsEndpoint?
        do { endpoint = try metrics.address().map(MetricsEndpoint.init(address:)) } catch { throw failure(error) }
        defer { endpoint?.close() }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let role: BackupRoleKeeper
        let store: any GenerationStore
        let replicationSecurity: ReplicationSecurity
        let serviceIP: ServiceIPHolder?
        do {
            serviceIP = try self.serviceIP.holder(logger: logger)
            // A standby never holds the address: one left here by a process that died without
            // giving it up would answer clients' ARP beside the primary's.
            if let serviceIP, serviceIP.isHere {
                logger.warning("removing a service IP this host still had: a standby does not hold it", metadata: ["ip": "\(serviceIP.ip)"])
                serviceIP.giveUp()
            }
            replicationSecurity = try security.security(logger: logger)
            store = try coordination.store(machine: coordination.name ?? "unnamed", group: group, logger: logger)
            role = BackupRoleKeeper(store: store, identity: CoordinationOptions.identity(role: "backup"), logger: logger)
        } catch {
            throw failure(error)
        }
        let service = BackupService(
            logger: logger, role: role, machine: coordination.name, listenerCount: addresses.count, corruptAtSync: injectCorruptionAtSync,
            stall: injectStall)
        let timing = try heartbeat.timing()
        let address = try replicationAddress()
        do {
            let bound = try blocking(on: group) {
                try await service.listen(on: address, security: replicationSecurity, heartbeat: timing, group: group)
            }
            logger.notice("waiting for a primary", metadata: ["replication": "\(bound)", "engine": "\(GuestEngineKind.preferred.rawValue)"])
        } catch {
            throw failure(error)
        }
        let registry = coordination.name.flatMap { coordination.standbyRegistry(machine: $0, group: group) }
        let registration = registry.flatMap { registry -> StandbyRegistration? in
            guard !["0.0.0.0", "::"].contains(address.host) else {
                logger.warning("--replication \(address) names no address a primary can reach: not registered as a standby")
                return nil
            }
            return registry.register(address, identity: role.identity, logger: logger)
        }
        let promotion = service.waitForPromotion()
        // Withdrawn and closed while the service opens: clients wait for neither. A primary that
        // connects meanwhile is refused (this backup has taken over).
        let leavingStandby = group.next().makeFutureWithTask {
            await registration?.withdraw()
            await service.close()
        }
        do {
            defer { serviceIP?.giveUp() }
            // The same identity it won with: the record it holds is its own.
            let primaryRole = PrimaryRoleKeeper(
                store: store, holder: role.identity, fenceTimeout: promotion.protection.fenceTimeout, logger: logger)
            let primary = PromotedPrimary(
                promotion: promotion, role: primaryRole, security: replicationSecurity, heartbeat: timing, machine: coordination.name ?? "",
                group: group, logger: logger)
            let code = try primary.serve(
                listening: addresses, serviceIP: serviceIP,
                standbys: { [address] in ((try? await registry?.standbys()) ?? []).filter { $0 != address } },
                migrations: coordination.name.flatMap { coordination.migrationBoard(machine: $0, group: group) },
                // Having left the role (handed over, or lost), it is a standby again: this same command.
                afterLeavingRole: { becomeStandby(Array(CommandLine.arguments.dropFirst()), logger: logger) })
            try? leavingStandby.wait()
            _ = try? blocking(on: group) { await primaryRole.letGo() }
            throw ExitCode(code)
        } catch let exit as ExitCode {
            throw exit
        } catch {
            throw failure(error)
        }
    }
}

/// `--heartbeat-interval` and `--heartbeat-timeout`, shared by primary and backup.
struct HeartbeatOptions: ParsableArguments {
    @Option(name: .long, help: "How often each side says it is alive when it has nothing else to send (default 10ms).")
    var heartbeatInterval: DurationArgument?

    @Option(name: .long, help: "Silence after which the peer counts as gone (default 100ms): the backup claims the machine's next generation (and takes over if it wins), the primary wins it alone (or stands down) and goes on unprotected.")
    var heartbeatTimeout: DurationArgument?

    func timing() throws -> HeartbeatTiming {
        let interval = heartbeatInterval.map { TimeAmount.nanoseconds($0.duration.nanoseconds) } ?? HeartbeatTiming.standard.interval
        let timeout = heartbeatTimeout.map { TimeAmount.nanoseconds($0.duration.nanoseconds) } ?? HeartbeatTiming.standard.timeout
        guard timeout > interval else { throw ValidationError("--heartbeat-timeout must be longer than --heartbeat-interval") }
        return HeartbeatTiming(interval: interval, timeout: timeout)
    }
}

/// `--tls-cert`, `--tls-key`, `--tls-ca` or `--insecure-replication`, shared by primary and
/// backup: the replication channel is authenticated unless the operator says otherwise.
struct ReplicationSecurityOptions: ParsableArguments {
    @Option(name: .long, help: "PEM certificate this side presents on the replication channel (mutual TLS; with --tls-key and --tls-ca).")
    var tlsCert: String?

    @Option(name: .long, help: "PEM private key of --tls-cert.")
    var tlsKey: String?

    @Option(name: .long, help: "PEM certificate of the authority the peer's certificate must be signed by; a peer without one is refused during the TLS handshake.")
    var tlsCa: String?

    @Flag(name: .long, help: "Replicate over plain TCP: anyone who reaches the replication address can act as the peer. Only for a pair you trust (or tests of other things).")
    var insecureReplication = false

    func validate() throws {
        let given = [tlsCert, tlsKey, tlsCa].compactMap { $0 }.count
        if insecureReplication && given > 0 { throw ValidationError("--insecure-replication and --tls-cert/--tls-key/--tls-ca exclude each other") }
        if !insecureReplication && given < 3 {
            throw ValidationError("the replication channel needs --tls-cert, --tls-key and --tls-ca (or --insecure-replication)")
        }
    }

    /// Loads the certificates (a missing or unreadable file is one line naming it).
    func security(logger: Logger) throws -> ReplicationSecurity {
        guard let tlsCert, let tlsKey, let tlsCa else {
            logger.warning("the replication channel is not authenticated (--insecure-replication): anyone who reaches it can act as the peer")
            return .insecure
        }
        return .mutualTLS(try .init(certificate: tlsCert, key: tlsKey, authority: tlsCa))
    }
}

extension BackupService.StallPoint: ExpressibleByArgument {}
