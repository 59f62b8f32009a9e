import Foundation
import UnderstudyCore

/// Carries a role's writes to the store and its answers back, one at a time, on a queue of its
/// own (never an event loop: a store that does not answer must not stall liveness). `PrimaryRole`
/// and `BackupRole` decide; this only performs.
public final class GenerationWriter: @unchecked Sendable {
    public enum Answer: Sendable {
        case won
        case lost(GenerationRecord?)
        case unreachable(String)
    }

    public let store: any GenerationStore
    /// Where the role's events are handled, in order.
    public let queue: DispatchQueue
    /// How long after an unanswered write it is tried again.
    public let retryDelay: Duration

    public init(store: any GenerationStore, queue: DispatchQueue, retryDelay: Duration = .milliseconds(100)) {
        self.store = store
        self.queue = queue
        self.retryDelay = retryDelay
    }

    /// Writes `record` if the store still holds `expected`, and hands the answer to `answered` on `queue`.
    public func write(_ record: GenerationRecord, ifGeneration expected: UInt64, answered: @escaping @Sendable (Answer) -> Void) {
        let (store, queue) = (store, queue)
        Task.detached {
            let answer: Answer
            do {
                switch try await store.write(record, ifGeneration: expected) {
                case .won: answer = .won
                case .lost(let current): answer = .lost(current)
                }
            } catch {
                answer = .unreachable("\(error)")
            }
            queue.async { answered(answer) }
        }
    }

    /// The guest exited: records the machine as let go (`stopped`), so that a primary of the same
    /// name may claim it again without being told the holder is gone. Best effort (the store's
    /// own request timeout bounds it); says what happened.
    public func letGo(generation: UInt64, holder: String) async -> String {
        let record = GenerationRecord.next(after: generation, holder: holder, standing: .stopped)
        do {
            switch try await store.write(record, ifGeneration: generation) {
            case .won: return "the machine is let go in generation \(record.generation)"
            case .lost(let current): return "not let go: \(current.map { "\($0)" } ?? "no record")"
            }
        } catch {
            return "not let go: \(error)"
        }
    }

    /// Runs `body` on `queue` after `retryDelay`.
    public func later(_ body: @escaping @Sendable () -> Void) {
        queue.asyncAfter(deadline: .now() + .nanoseconds(Int(retryDelay.nanoseconds)), execute: body)
    }

    /// Nanoseconds on a monotonic clock, for the roles' timeouts.
    public static var now: UInt64 { DispatchTime.now().uptimeNanoseconds }
}

