/// The one-primary rule, as the backup sees it (DESIGN.md, "One primary"): which primary it
/// follows, when its copy may be promoted, and what it must win before it serves. A pure state
/// machine like `PrimaryRole`, driven by `BackupService` and by the role simulation.
///
/// - It follows one primary session at a time, never one of an older generation than it knows.
/// - Its copy protects the machine only from the primary's `protecting` marker on, once it holds
///   everything up to the marker's position (the primary released output alone before it).
/// - When a protecting primary is gone, it takes over only after it has won the next generation.
///   Losing that write means the primary lives on alone: the copy is discarded, and the backup
///   waits to be seeded again. The store unreachable: it keeps trying and does not serve.
public struct BackupRole: Sendable {
    public enum Standing: Equatable, Sendable {
        /// No primary, or one that has not yet made this copy protect anything.
        case waiting
        /// A primary recorded this backup as protecting it in `generation`.
        case protecting
        /// The protected primary is gone: claiming the next generation.
        case claiming
        /// Won the generation: this process serves the machine.
        case promoted
    }

    public enum Action: Equatable, Sendable {
        case write(GenerationRecord, ifGeneration: UInt64)
        case retryLater
        /// Serve the machine from the copy.
        case takeOver(generation: UInt64)
        /// The copy is of a primary that lives on: drop it and wait for a seed.
        case discardCopy(String)
    }

    public let identity: String
    public private(set) var standing: Standing = .waiting
    /// The newest generation this backup has seen anywhere: a hello, a marker, the store.
    public private(set) var knownGeneration: UInt64 = 0
    /// The generation the followed primary recorded this backup as protecting.
    public private(set) var protectedGeneration: UInt64 = 0
    public private(set) var inFlight: GenerationRecord?

    public init(identity: String) { self.identity = identity }

    /// A primary says hello in `generation`: nil to follow it, else why it is refused.
    public mutating func admit(generation: UInt64) -> String? {
        switch standing {
        case .claiming: return "this backup is claiming its primary's machine"
        case .promoted: return "this backup has taken over its primary's machine"
        case .waiting, .protecting: break
        }
        guard generation >= knownGeneration else {
            return "generation \(generation) is older than \(knownGeneration), which this backup has seen"
        }
        knownGeneration = generation
        standing = .waiting
        protectedGeneration = 0
        return nil
    }

    /// The followed primary recorded this backup as protecting it in `generation`, and the copy
    /// holds everything up to the marker: it may be promoted from now on.
    public mutating func protecting(generation: UInt64) -> String? {
        guard standing == .waiting || standing == .protecting else { return "a protection marker while \(standing)" }
        guard generation >= knownGeneration else { return "a protection marker of generation \(generation), older than \(knownGeneration)" }
        knownGeneration = generation
        protectedGeneration = generation
        standing = .protecting
        return nil
    }

    /// The session ended without a death (a goodbye, a refusal either way): nothing to take over.
    public mutating func sessionEnded() {
        guard standing == .waiting || standing == .protecting else { return }
        standing = .waiting
        protectedGeneration = 0
    }

    /// The followed primary is gone (its connection ended without a goodbye, or fell silent).
    public mutating func primaryGone() -> [Action] {
        guard standing == .protecting else {
            if standing == .waiting { protectedGeneration = 0 }
            return []
        }
        standing = .claiming
        return [issue(.next(after: protectedGeneration, holder: identity, standing: .alone))]
    }

    public mutating func written() -> [Action] {
        guard let record = inFlight else { preconditionFailure("an answer with no write in flight") }
        inFlight = nil
        return promote(record)
    }

    public mutating func lost(current: GenerationRecord?) -> [Action] {
        guard inFlight != nil else { preconditionFailure("an answer with no write in flight") }
        inFlight = nil
        if let current, current.holder == identity { return promote(current) }  // an unseen earlier write of ours
        if let current { knownGeneration = max(knownGeneration, current.generation) }
        standing = .waiting
        protectedGeneration = 0
        return [.discardCopy(current.map { "the primary lives on: \($0)" } ?? "the generation record is gone")]
    }

    /// Unlike a primary, a backup never gives up: until the store answers, nobody may serve from
    /// this copy, and the primary (if alive) holds its output or stands down by its own timeout.
    public mutating func unreachable() -> [Action] {
        precondition(inFlight != nil, "an answer with no write in flight")
        return [.retryLater]
    }

    public mutating func retry() -> [Action] {
        guard let record = inFlight else { return [] }
        inFlight = nil
        return [issue(record)]
    }

    private mutating func promote(_ record: GenerationRecord) -> [Action] {
        assert(record.holder == identity && record.generation > protectedGeneration, "a backup promotes on a generation it won")
        standing = .promoted
        knownGeneration = record.generation
        return [.takeOver(generation: record.generation)]
    }

    private mutating func issue(_ record: GenerationRecord) -> Action {
        precondition(inFlight == nil, "one write at a time")
        inFlight = record
        return .write(record, ifGeneration: record.generation - 1)
    }
}
