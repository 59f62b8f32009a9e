import ArgumentParser
import Foundation
import Logging
import NIOCore
import NIOPosix
import UnderstudyCheckpoint
import UnderstudyCore
import UnderstudyMachine
import UnderstudyProtection
import UnderstudyReplication

struct PrimaryCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "primary",
        abstract: "Run a guest protected by a backup (`understudy backup`), in remus, llm or active mode.",
        discussion: """
            Wins the machine's generation in --etcd (alone) before it serves, then serves and \
            connects to --backup in the background, holding no output while it seeds it; once the \
            backup holds a full checkpoint and etcd records it as protecting, the machine is \
            protected: output leaves only when the backup has acknowledged what it takes to \
            reproduce it (remus: the epoch's checkpoint; llm and active: the log up to the output). In active mode the backup runs the machine too, \
            following the log; every --sync-every both stop at the same log position and compare \
            digests of the pages they wrote, and only blocks that differ are sent. The primary \
            keeps a copy of the memory the backup holds, so that memory travels as the \
            --block-size blocks that changed. If the backup is lost (silent past --heartbeat-timeout, or \
            seeded and acknowledging nothing for --ack-timeout) the primary holds everything until it \
            has won the next generation alone, then releases it, goes on unprotected, and seeds the \
            backup again when it can reach it; if the backup won that generation (it took over), or \
            etcd cannot be reached for --fence-timeout, the primary drops what it held and exits \
            with status 75. Without --etcd nothing fences a pause or a partition (said at start). The replication channel \
            is mutual TLS (--tls-cert, --tls-key, --tls-ca) unless --insecure-replication is given.
            """
    )

    @Argument(help: "The guest: a wasm32-wasi command module.")
    var module: String

    @Option(name: .long, help: "HOST:PORT to listen on; repeat for more. The first becomes the guest's fd 3.")
    var listen: [String] = []

    @Option(name: .long, help: "HOST:PORT of a backup's --replication: the standby seeded first. With --etcd it may be left out: the standbys registered for the machine are seeded.")
    var backup: String?

    @Option(name: .long, help: "remus (a checkpoint every --epoch, output held until it is applied), llm (the event log streamed, output held until the log before it is held) or active (as llm, and the backup runs the machine from the log; states compared every --sync-every).")
    var mode: ReplicationMode

    @Option(name: .long, help: "remus: the epoch, like 25ms (default 25ms).")
    var epoch: DurationArgument?

    @Option(name: .long, help: "llm: how often a checkpoint is sent, bounding what a takeover replays (default 50ms: a takeover replays at most about that much guest execution).")
    var checkpointInterval: DurationArgument?

    @Option(name: .long, help: "active: how often both machines stop at one log position and compare (default 100ms).")
    var syncEvery: DurationArgument?

    @Option(name: .long, help: "Memory travels in blocks of this many bytes: remus and llm checkpoints send the blocks that changed (XORed with the backup's copy), an active sync that finds differences compares and repairs blocks. 64, 128, 256 … 4096 (default 64).")
    var blockSize: Int?

    @Flag(name: .long, help: "active: check at every sync that the backup's whole state equals the primary's (a pass over memory on each side; for tests and diagnosis).")
    var verifySyncs = false

    @Option(name: .long, help: "A seeded backup that leaves an output or a checkpoint unacknowledged this long counts as lost, though it heartbeats: the primary holds what it has until it has won the next generation alone, then serves on unprotected (default 500ms).")
    var ackTimeout: DurationArgument?

    @Option(name: .long, help: "How long a primary that must win a generation (at start, or having lost its backup) keeps trying to reach etcd, holding its output meanwhile, before it stands down and exits with status 75 (default 5s).")
    var fenceTimeout: DurationArgument?

    @Option(name: .long, help: "Start even though etcd names another holder of the machine in this generation (that process must be gone: check before you pass it).")
    var takeOverGeneration: UInt64?

    @Option(name: .long, help: "HOST:PORT this process listens on for a primary once it has left the primary role (a planned migration handed it away, or it lost the role and stood down): it becomes a standby of the machine, registered in etcd, so the pair forms again by itself. Without it, it exits (0 after a handover, 75 after standing down).")
    var replication: String?

    @OptionGroup var coordination: CoordinationOptions

    @OptionGroup var heartbeat: HeartbeatOptions

    @OptionGroup var security: ReplicationSecurityOptions

    @OptionGroup var serviceIP: ServiceIPOptions

    @OptionGroup var metrics: MetricsOption

    @OptionGroup var engine: EngineOption

    @OptionGroup var logging: LoggingOptions

    @OptionGroup var guest: GuestOptions

    func validate() throws {
        _ = try ServiceAddress.listenAddresses(listen)
        _ = try backupAddress()
        _ = try heartbeat.timing()
        guard mode != .none else { throw ValidationError("--mode must be remus, llm or active (`understudy run` serves unprotected)") }
        if epoch != nil && mode != .remus { throw ValidationError("--epoch applies to --mode remus") }
        if checkpointInterval != nil && mode != .llm { throw ValidationError("--checkpoint-interval applies to --mode llm") }
        if (syncEvery != nil || verifySyncs) && mode != .active {
            throw ValidationError("--sync-every and --verify-syncs apply to --mode active")
        }
        if let blockSize, !SyncBlockSize.allowed.contains(blockSize) {
            throw ValidationError("--block-size must be one of \(SyncBlockSize.allowed.map(String.init).joined(separator: ", ")), not \(blockSize)")
        }
    }

    /// The flags of how the machine is protected, as its backup is told them (it protects the
    /// same way once promoted).
    private var protection: ProtectionSettings {
        var settings = ProtectionSettings()
        if let epoch { settings.epoch = epoch.duration }
        if let checkpointInterval { settings.checkpointInterval = checkpointInterval.duration }
        if let syncEvery { settings.syncInterval = syncEvery.duration }
        if let blockSize { settings.blockSize = blockSize }
        settings.verifySyncs = verifySyncs
        if let ackTimeout { settings.ackTimeout = ackTimeout.duration }
        if let fenceTimeout { settings.fenceTimeout = fenceTimeout.duration }
        return settings
    }

    private func backupAddress() throws -> ServiceAddress? {
        guard let backup else {
            guard coordination.etcd != nil else { throw ValidationError("give --backup, or --etcd to seed the standbys registered there") }
            return nil
        }
        let address: ServiceAddress
        do { address = try ServiceAddress(parsing: backup) } catch { throw ValidationError("--backup \(error)") }
        // Port 0 names no backup: the primary would try it forever and serve unprotected.
        guard address.port != 0 else { throw ValidationError("--backup \(backup) names no port (0): give the backup's --replication address") }
        return address
    }

    func run() throws {
        let logger = logging.bootstrap(label: "understudy.primary")
        try engine.choose()
        let addresses = try ServiceAddress.listenAddresses(listen)
        do {
            let endpoint = try metrics.address().map(MetricsEndpoint.init(address:))
            defer { endpoint?.close() }
            let prepared = try ModulePreparer().prepare(path: module)
            let name = URL(fileURLWithPath: module).lastPathComponent
            let machineName = coordination.name ?? name
            try CoordinationOptions.check(name: machineName)
            let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
            let replicationSecurity = try security.security(logger: logger)
            let serviceIP = try self.serviceIP.holder(logger: logger)
            let role = try claimRole(machine: machineName, group: group, logger: logger)
            let configuration = guest.configuration(module: module, listenerCount: addresses.count)
            let manifest = RecordingManifest(moduleHash: prepared.hash, configuration: configuration)
            let suspension = SuspensionRequest()
            let live = try LiveWorld(listening: addresses, suspension: suspension)
            // The generation is won and the listeners are open: clients the announcement sends
            // here find a listener, not a reset.
            try serviceIP?.take()
            defer { serviceIP?.giveUp() }
            var options = PrimaryReplicator.Options(
                mode: mode, backup: try backupAddress(), security: replicationSecurity, protection: protection, heartbeat: try heartbeat.timing())
            options.machine = machineName
            options.migrations = coordination.migrationBoard(machine: machineName, group: group)
            if let registry = coordination.standbyRegistry(machine: machineName, group: group) {
                options.standbys = { (try? await registry.standbys()) ?? [] }
            }
            options.beforeStandingDown = { serviceIP?.giveUp() }
            if let replication {
                let arguments = standbyArguments(replication: replication, machine: machineName)
                options.afterLeavingRole = { becomeStandby(arguments, logger: logger) }
            }
            let replicator = PrimaryReplicator(
                options: options, role: role, prepared: prepared, manifest: manifest,
                live: live, suspension: suspension, group: group, logger: logger)
            let machine = try Machine(prepared: prepared, world: replicator.world, suspension: suspension, configuration: configuration)
            replicator.start(machine)
            logger.notice(
                "serving",
                metadata: [
                    "guest": "\(name)", "module": "\(prepared.hash.prefix(16))", "mode": "\(mode)",
                    "listen": "\(addresses.map(\.description).joined(separator: ","))", "backup": "\(backup ?? "a standby registered in etcd")",
                    "machine": "\(machineName)", "generation": "\(role.fencing.generation)", "engine": "\(configuration.engine.rawValue)",
                ])
            let code: Int32
            do {
                code = try machine.run()
            } catch {
                replicator.stop()
                throw error
            }
            replicator.stop()
            _ = try? blocking(on: group) { await role.letGo() }
            throw ExitCode(code)
        } catch let exit as ExitCode {
            throw exit
        } catch let standDown as StandDown {
            FileHandle.standardError.write(Data("understudy: \(standDown)\n".utf8))
            throw ExitCode(StandDown.exitCode)
        } catch {
            throw failure(error)
        }
    }

    /// `understudy backup` with this primary's channel, coordination, service IP and listeners:
    /// what it becomes after handing its role away.
    private func standbyArguments(replication: String, machine: String) -> [String] {
        var arguments = ["backup", "--replication", replication, "--name", machine, "--log-level", "\(logging.logLevel)"]
        for address in listen { arguments += ["--listen", address] }
        if let etcd = coordination.etcd { arguments += ["--etcd", etcd] }
        if let cert = security.tlsCert, let key = security.tlsKey, let authority = security.tlsCa {
            arguments += ["--tls-cert", cert, "--tls-key", key, "--tls-ca", authority]
        } else {
            arguments.append("--insecure-replication")
        }
        if let ip = serviceIP.serviceIP, let interface = serviceIP.serviceInterface {
            arguments += ["--service-ip", ip, "--service-interface", interface]
        }
        if let interval = heartbeat.heartbeatInterval { arguments += ["--heartbeat-interval", "\(interval.duration.nanoseconds / 1000)us"] }
        if let timeout = heartbeat.heartbeatTimeout { arguments += ["--heartbeat-timeout", "\(timeout.duration.nanoseconds / 1000)us"] }
        return arguments
    }

    /// Wins the machine's first generation before anything is served. A record held by another
    /// process is left alone unless `--take-over-generation` names it.
    private func claimRole(machine: String, group: EventLoopGroup, logger: Logger) throws -> PrimaryRoleKeeper {
        let store = try coordination.store(machine: machine, group: group, logger: logger)
        let timeout = protection.fenceTimeout
        let role = PrimaryRoleKeeper(store: store, holder: CoordinationOptions.identity(role: "primary"), fenceTimeout: timeout, logger: logger)
        let deadline = ContinuousClock.now + timeout
        var observed: GenerationRecord?
        while true {
            do {
                observed = try blocking(on: group) { try await store.read() }
                break
            } catch {
                guard ContinuousClock.now < deadline else { throw StandDown(reason: "\(error) (for --fence-timeout \(timeout.milliseconds) ms)") }
                logger.warning("cannot read the machine's generation; retrying", metadata: ["reason": "\(error)"])
                Thread.sleep(forTimeInterval: 0.1)
            }
        }
        if let observed, observed.standing != .stopped, takeOverGeneration != observed.generation {
            throw CommandError(
                "machine \(machine) is \(observed) in \(store.location); if that process is gone, pass --take-over-generation \(observed.generation)")
        }
        try role.claim(after: observed?.generation ?? 0)
        return role
    }
}

extension ReplicationMode: ExpressibleByArgument {
    public init?(argument: String) {
        guard let mode = Self.allCases.first(where: { $0.description == argument }) else { return nil }
        self = mode
    }

    /// What `primary --mode` takes (`none` is `run`).
    public static var allValueStrings: [String] { ["remus", "llm", "active"] }
}

/// Replaces this process with `understudy ARGUMENTS` (the same executable); returns only if
/// that fails, having said why.
func becomeStandby(_ arguments: [String], logger: Logger) {
    let executable = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
    logger.notice("becoming the new primary's standby", metadata: ["arguments": "\(arguments.joined(separator: " "))"])
    let argv = ([executable] + arguments).map { strdup($0) } + [nil]
    execv(executable, argv)
    logger.error("cannot become a standby", metadata: ["reason": "\(String(cString: strerror(errno)))"])
}
