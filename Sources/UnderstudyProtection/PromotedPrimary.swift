import Foundation
import Logging
import NIOCore
import UnderstudyCore
import UnderstudyMachine
import UnderstudyReplication

/// A backup that has won the machine's generation and serves it as its primary: the promoted
/// machine (restored, in `llm` replaying the log first) runs on a `PrimaryReplicator`, so it
/// accepts a standby, seeds it and protects the machine in the same mode, exactly as the
/// original primary did. Until a standby is seeded it serves alone, which the generation it
/// won allows. (`active` is not promoted this way yet: its machine goes live where it runs.)
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
        precondition(promotion.mode != .active && promotion.mode != .none, "remus and llm are promoted to primaries")
        self.promotion = promotion
        self.role = role
        self.security = security
        self.heartbeat = heartbeat
        self.machine = machine
        self.group = group
        self.logger = logger
    }

    /// Serves until the guest exits; returns its exit code. `standbys` are the standbys to seed.
    public func serve(
        listening addresses: [ServiceAddress], serviceIP: ServiceIPHolder?, standbys: @escaping @Sendable () async -> [ServiceAddress]
    ) throws -> Int32 {
        role.adopt(generation: promotion.generation)
        var options = PrimaryReplicator.Options(mode: promotion.mode, backup: nil, security: security, heartbeat: heartbeat)
        options.machine = machine
        options.memoryLimitBytes = promotion.manifest.configuration.memoryLimitBytes
        options.standbys = standbys
        options.beforeStandingDown = { serviceIP?.giveUp() }
        let configuration = Array(try JSONEncoder().encode(promotion.manifest))
        let suspension = SuspensionRequest()
        var built: PrimaryReplicator?
        let takeover = try Takeover(promotion, listening: addresses, serviceIP: serviceIP, suspension: suspension, logger: logger) {
            [options, role, group, logger] live in
            let replicator = PrimaryReplicator(
                options: options, role: role, prepared: promotion.prepared, configuration: configuration, live: live, suspension: suspension,
                group: group, logger: logger)
            built = replicator
            return replicator.world
        }
        guard let replicator = built else { throw TakeoverError("the promoted machine has no replicator") }
        replicator.start(takeover.machine, connecting: takeover.replay == nil)
        let (replayed, detected, logger) = (promotion.log.count, promotion.detected, logger)
        takeover.replay?.onWentLive = {
            logger.notice(
                "replayed the log; live", metadata: ["entries": "\(replayed)", "sinceDetectionMillis": "\((ContinuousClock.now - detected).milliseconds)"])
            replicator.startConnecting()
        }
        logger.notice(
            "serving",
            metadata: [
                "listen": "\(addresses.map(\.description).joined(separator: ","))", "mode": "\(promotion.mode)",
                "generation": "\(promotion.generation)", "sinceDetectionMillis": "\((ContinuousClock.now - detected).milliseconds)",
            ])
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
