import Foundation
import Logging
import UnderstudyCheckpoint
import UnderstudyCore
import UnderstudyEventLog
import UnderstudyMachine

/// Builds the machine a promoted backup serves: the applied checkpoint restored in a fresh
/// instance, on the service address once the dead primary has let go of it, and in `llm` the log
/// after the checkpoint replayed before the live world answers. Connections open at the
/// primary's death fail towards the guest (their identities have no socket here) and clients
/// reconnect (DESIGN.md, "Service address").
public struct Takeover {
    public let machine: Machine
    /// `llm`: the replay in front of the live world.
    public let replay: ReplayThenLiveWorld?
    public let live: LiveWorld

    /// How long to keep trying for the service address: on one host it is free as soon as the
    /// primary's process is gone; a primary that is only cut off keeps it, and this backup waits.
    public static let addressPatience: Duration = .seconds(30)

    /// `around` builds the world the machine answers from on top of the live one (the promoted
    /// primary's holding and recording).
    public init(
        _ promotion: BackupService.Promotion, listening addresses: [ServiceAddress], serviceIP: ServiceIPHolder?, suspension: SuspensionRequest,
        logger: Logger, around: (LiveWorld) throws -> MachineWorld
    ) throws {
        guard addresses.count == promotion.manifest.listenerCount else {
            throw TakeoverError("the primary's machine has \(promotion.manifest.listenerCount) listeners; --listen gave \(addresses.count)")
        }
        live = try Self.openService(addresses, serviceIP: serviceIP, suspension: suspension, logger: logger)
        let accepted = promotion.log.compactMap(\.acceptedConnection).map(\.value).max() ?? 0
        live.reserveConnections(through: max(promotion.state.descriptors.highestConnection, accepted))
        let world: MachineWorld
        let served = try around(live)
        if promotion.mode == .llm {
            let replay = ReplayThenLiveWorld(replaying: ReplayWorld(entries: promotion.log, startingAt: 0), then: served)
            self.replay = replay
            world = replay
        } else {
            replay = nil
            world = served
        }
        machine = try Machine(
            restoring: promotion.state, prepared: promotion.prepared, world: world, suspension: suspension,
            configuration: promotion.manifest.configuration)
    }

    /// Opens the listeners, then takes the service IP (if there is one): clients the announcement
    /// sends here find a listener, not a reset.
    static func openService(_ addresses: [ServiceAddress], serviceIP: ServiceIPHolder?, suspension: SuspensionRequest, logger: Logger) throws
        -> LiveWorld
    {
        let deadline = ContinuousClock.now + addressPatience
        var waiting = false
        while true {
            do {
                let live = try LiveWorld(listening: addresses, suspension: suspension)
                try serviceIP?.take()
                return live
            } catch let error as ServiceIPError {
                throw error
            } catch {
                guard ContinuousClock.now < deadline else { throw error }
                if !waiting { logger.warning("the service address is still taken; waiting for it", metadata: ["reason": "\(error)"]) }
                waiting = true
                Thread.sleep(forTimeInterval: 0.002)
            }
        }
    }
}

struct TakeoverError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
