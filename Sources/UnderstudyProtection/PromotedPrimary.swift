import Foundation
import Logging
import NIOCore
import UnderstudyCheckpoint
import UnderstudyCore
import UnderstudyMachine
import UnderstudyReplication

/// A backup that has won the machine's generation and serves it as its primary: the promoted
/// machine (restored, in `llm` replaying the log first) runs on a `PrimaryReplicator`, so it
/// accepts a standby, seeds it and protects the machine in the same mode, exactly as the
/// original primary did. Until a standby is seeded it serves alone, which the generation it
/// won allows. In `active` the machine that followed the log goes live where it runs, and the
/// replicator takes it over there.
public struct PromotedPrimary {
    let promotion: BackupService.Promotion
    let role: PrimaryRoleKeeper
    let security: ReplicationSecurity
    let heartbeat: HeartbeatTiming
    let machine: String
    let group: EventLoopGroup
    let logger: Logger

    public init(
        promotion: BackupService.Promotion, role: PrimaryRoleKeeper, security: ReplicationSecurity, heartbeat: HeartbeatTiming, machine: String,
        group: EventLoopGroup, logger: Logger
    ) {
        precondition(promotion.mode != .none, "a promotion is of a protected machine")
        self.promotion = promotion
        self.role = role
        self.security = security
        self.heartbeat = heartbeat
        self.machine = machine
        self.group = group
        self.logger = logger
    }

    /// Serves until the guest exits; returns its exit code. `standbys` are the standbys to seed.
    /// `migrations`: where planned migrations are asked for, and where one that ends here is
    /// answered (served, with its downtime: from the old primary's `handover` to the moment this
    /// machine can answer).
    public func serve(
        listening addresses: [ServiceAddress], serviceIP: ServiceIPHolder?, standbys: @escaping @Sendable () async -> [ServiceAddress],
        migrations: MigrationBoard?, afterLeavingRole: @escaping @Sendable () -> Void
    ) throws -> Int32 {
        role.adopt(generation: promotion.generation)
        var options = PrimaryReplicator.Options(
            mode: promotion.mode, backup: nil, security: security, protection: promotion.protection, heartbeat: heartbeat)
        options.machine = machine
        options.standbys = standbys
        options.beforeStandingDown = { serviceIP?.giveUp() }
        options.migrations = migrations
        options.afterLeavingRole = afterLeavingRole
        let (generation, handoverStarted, machine) = (promotion.generation, promotion.handoverStarted, machine)
        let answerMigration: @Sendable () -> Void = { [logger] in
            guard let migrations, let started = handoverStarted else { return }
            let downtime = Double((ContinuousClock.now - started).nanoseconds) / 1e6
            logger.notice("planned migration served", metadata: ["downtimeMillis": "\(downtime)"])
            Task {
                guard var request = try? await migrations.read(), request.state == .asked else { return }
                request.state = .done
                request.downtimeMillis = downtime
                request.detail = "\(machine) is served in generation \(generation)"
                try? await migrations.post(request)
            }
        }
        let detected = promotion.detected
        var built: PrimaryReplicator?
        let replicator = { [options, role, group, logger] (live: LiveWorld, suspension: SuspensionRequest, capture: CheckpointCapture?) in
            let replicator = PrimaryReplicator(
                options: options, role: role, prepared: promotion.prepared, manifest: promotion.manifest, live: live, suspension: suspension,
                group: group, logger: logger, capture: capture)
            built = replicator
            return replicator.world
        }
        let serving = { [logger] in
            logger.notice(
                "serving",
                metadata: [
                    "listen": "\(addresses.map(\.description).joined(separator: ","))", "mode": "\(promotion.mode)",
                    "generation": "\(promotion.generation)", "sinceDetectionMillis": "\((ContinuousClock.now - detected).milliseconds)",
                    "engine": "\(GuestEngineKind.preferred.rawValue)",
                ])
        }
        if let follower = promotion.follower {
            serving()
            let code = try follower.takeOver(
                listening: addresses, serviceIP: serviceIP, detected: detected,
                around: { live, capture in replicator(live, follower.suspension, capture) },
                onLive: { machine in
                    built?.start(machine)
                    answerMigration()
                })
            built?.stop()
            return code
        }
        let suspension = SuspensionRequest()
        let takeover = try Takeover(promotion, listening: addresses, serviceIP: serviceIP, suspension: suspension, logger: logger) { live in
            replicator(live, suspension, nil)
        }
        guard let replicator = built else { throw TakeoverError("the promoted machine has no replicator") }
        replicator.start(takeover.machine, connecting: takeover.replay == nil)
        let replayed = promotion.log.count
        takeover.replay?.onWentLive = {
            logger.notice(
                "replayed the log; live", metadata: ["entries": "\(replayed)", "sinceDetectionMillis": "\((ContinuousClock.now - detected).milliseconds)"])
            replicator.startConnecting()
            answerMigration()
        }
        if takeover.replay == nil { answerMigration() }
        serving()
        let code: Int32
        do {
            code = try takeover.machine.run()
        } catch {
            replicator.stop()
            throw error
        }
        replicator.stop()
        return code
    }
}
