import Dispatch
import Foundation
import Logging
import UnderstudyReplication

/// Runs the backup's `BackupRole` in the process: admissions and markers from the replication
/// connection, the primary's death from the applier, the store's answers, in order on one queue.
/// Short calls are answered synchronously (nothing on the queue waits for the store: writes run
/// on tasks of their own).
public final class BackupRoleKeeper: @unchecked Sendable {
    /// Stamped on this backup's frames and the oldest generation whose frames it takes.
    public let fencing = FencingToken()
    public let identity: String
    private let queue = DispatchQueue(label: "understudy.backup-role")
    private let writer: GenerationWriter
    private let logger: Logger
    private var role: BackupRole
    /// What to do once the generation is won, or the copy is to be dropped (the queue only).
    private var onTakeOver: (@Sendable (UInt64) -> Void)?
    private var onDiscard: (@Sendable (String) -> Void)?

    public init(store: any GenerationStore, identity: String, logger: Logger) {
        self.identity = identity
        self.logger = logger
        writer = GenerationWriter(store: store, queue: queue)
        role = BackupRole(identity: identity)
    }


    /// nil to follow a primary of `generation`, else why it is refused.
    public func admit(generation: UInt64) -> String? {
        queue.sync {
            let refusal = role.admit(generation: generation)
            fencing.raise(to: role.knownGeneration)
            return refusal
        }
    }

    /// The copy holds everything up to the primary's marker of `generation`: it protects.
    public func protecting(generation: UInt64) -> String? {
        queue.sync {
            let refusal = role.protecting(generation: generation)
            fencing.raise(to: role.knownGeneration)
            if refusal == nil { logger.notice("protecting the primary", metadata: ["generation": "\(generation)"]) }
            return refusal
        }
    }

    public func sessionEnded() { queue.sync { role.sessionEnded() } }

    /// The promoted machine's guest exited: the machine is let go in the store (best effort).
    public func letGo() async {
        let generation = queue.sync { role.standing == .promoted ? role.knownGeneration : 0 }
        guard generation > 0 else { return }
        let said = await writer.letGo(generation: generation, holder: identity)
        logger.notice("\(said)")
    }

    /// The followed primary is gone. False when there is nothing to take over; otherwise the
    /// claim has begun and ends in `takeOver` (won) or `discard` (the primary lives on).
    public func primaryGone(takeOver: @escaping @Sendable (UInt64) -> Void, discard: @escaping @Sendable (String) -> Void) -> Bool {
        queue.sync {
            let actions = role.primaryGone()
            guard !actions.isEmpty else { return false }
            onTakeOver = takeOver
            onDiscard = discard
            perform(actions)
            return true
        }
    }

    /// The queue.
    private func perform(_ actions: [BackupRole.Action]) {
        for action in actions {
            switch action {
            case .write(let record, let expected):
                logger.notice("the primary is gone; claiming the next generation", metadata: ["record": "\(record)", "store": "\(writer.store.location)"])
                writer.write(record, ifGeneration: expected) { [self] answer in
                    switch answer {
                    case .won: perform(role.written())
                    case .lost(let current): perform(role.lost(current: current))
                    case .unreachable(let reason):
                        logger.warning("cannot reach the generation store; not taking over until it answers", metadata: ["reason": "\(reason)"])
                        perform(role.unreachable())
                    }
                }
            case .retryLater: writer.later { [self] in perform(role.retry()) }
            case .takeOver(let generation):
                fencing.raise(to: generation)
                onTakeOver?(generation)
            case .discardCopy(let reason):
                fencing.raise(to: role.knownGeneration)
                logger.warning("not taking over", metadata: ["reason": "\(reason)"])
                onDiscard?(reason)
            }
        }
    }
}
