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
    /// name may claim it again without being told the holder is gone. Waits at most `patience`;
    /// says what happened. Called from a thread that may block (the command's main thread).
    public func letGo(generation: UInt64, holder: String, patience: Duration = .seconds(1)) -> String {
        let record = GenerationRecord.next(after: generation, holder: holder, standing: .stopped)
        let store = store
        let outcome = LetGoOutcome()
        let done = DispatchSemaphore(value: 0)
        Task.detached {
            do {
                switch try await store.write(record, ifGeneration: generation) {
                case .won: outcome.set("the machine is let go in generation \(record.generation)")
                case .lost(let current): outcome.set("not let go: \(current.map { "\($0)" } ?? "no record")")
                }
            } catch {
                outcome.set("not let go: \(error)")
            }
            done.signal()
        }
        guard done.wait(timeout: .now() + .nanoseconds(Int(patience.nanoseconds))) == .success else {
            return "not let go: the generation store did not answer within \(patience.milliseconds) ms"
        }
        return outcome.text
    }

    /// Runs `body` on `queue` after `retryDelay`.
    public func later(_ body: @escaping @Sendable () -> Void) {
        queue.asyncAfter(deadline: .now() + .nanoseconds(Int(retryDelay.nanoseconds)), execute: body)
    }

    /// Nanoseconds on a monotonic clock, for the roles' timeouts.
    public static var now: UInt64 { DispatchTime.now().uptimeNanoseconds }
}

private final class LetGoOutcome: @unchecked Sendable {
    private let lock = NSLock()
    private var said = ""
    var text: String { lock.withLock { said } }
    func set(_ text: String) { lock.withLock { said = text } }
}
