/// The one-primary rule, as the primary sees it (DESIGN.md, "One primary"): when its output may
/// leave, and what it must win in the generation store first. A pure state machine — events in,
/// actions out, no clock, no thread, no store — driven by `PrimaryRoleKeeper` in the process and
/// by the role simulation in the tests, so the rule that runs is the rule that is checked.
///
/// - Alone, output leaves as it is produced; that is only so once this process has *won* a
///   generation as alone.
/// - Protected, output leaves when the backup has acknowledged what it depends on.
/// - A protected primary that loses its backup holds everything (`fencing`) until it has won the
///   next generation alone. Losing that write means the backup won it: this process stands down.
/// - The store unreachable: keep holding, retry, and stand down after the fence timeout.
public struct PrimaryRole: Sendable {
    public enum Standing: Equatable, Sendable {
        /// Claiming its first generation: nothing leaves.
        case claiming
        /// Holds `generation` alone: output leaves as it is produced.
        case alone
        /// Holds `generation` protected by a backup: output waits for its acknowledgement.
        case protected
        /// Lost its backup while protected: everything is held until the next generation is won.
        case fencing
        /// Lost the role or gave up: nothing more leaves, and the process exits.
        case stoodDown(String)
    }

    public enum Action: Equatable, Sendable {
        /// Write `record` if the store's generation is still `ifGeneration`; answer with
        /// `written`, `lost` or `unreachable`.
        case write(GenerationRecord, ifGeneration: UInt64)
        /// The same write again after `retryDelay` (the store did not answer).
        case retryLater
        /// From now on output waits for `backup`'s acknowledgement (nil: for nobody, until the
        /// next generation is won); frames carry `generation`.
        case startHolding(generation: UInt64, backup: String?)
        /// Everything held leaves now, and later output goes straight out; frames carry `generation`.
        case releaseEverything(generation: UInt64)
        /// Drop what is held, close the listeners, say why and exit non-zero.
        case standDown(String)
    }

    public let holder: String
    /// How long a primary that must win a generation keeps trying before it gives up.
    public let fenceTimeoutNanos: UInt64
    public private(set) var standing: Standing = .claiming
    /// The generation this process holds (0 before its first).
    public private(set) var generation: UInt64 = 0
    /// The write in flight, if any: one at a time, answered before the next is decided.
    public private(set) var inFlight: GenerationRecord?
    /// The seeded backup to record as protecting, while it stays connected.
    private var seededBackup: String?
    /// Since when this process has needed a write it could not make (claiming or fencing).
    private var needingSince: UInt64?

    public init(holder: String, fenceTimeoutNanos: UInt64) {
        self.holder = holder
        self.fenceTimeoutNanos = fenceTimeoutNanos
    }

    public var hasStoodDown: Bool { if case .stoodDown = standing { return true } else { return false } }

    /// Starts claiming the generation after `observed` (what the store holds now; 0 for nothing).
    public mutating func start(after observed: UInt64, now: UInt64) -> [Action] {
        precondition(standing == .claiming && inFlight == nil, "a primary starts once")
        needingSince = now
        return [issue(.next(after: observed, holder: holder, standing: .alone))]
    }

    /// A backup that won `generation` alone to take the machine over becomes its primary: it
    /// holds the generation already (its holder is this role's), so nothing is written and its
    /// output leaves as it is produced.
    public mutating func promoted(holding generation: UInt64) -> [Action] {
        precondition(standing == .claiming && inFlight == nil, "a primary starts once")
        precondition(generation > 0, "a promotion holds a generation")
        self.generation = generation
        standing = .alone
        return [.releaseEverything(generation: generation)]
    }

    /// The backup is seeded and connected: record that it protects the machine.
    public mutating func backupSeeded(_ backup: String) -> [Action] {
        guard !hasStoodDown else { return [] }
        seededBackup = backup
        return decide()
    }

    /// The backup is gone (its connection ended, it fell silent or stopped acknowledging).
    public mutating func backupLost(now: UInt64) -> [Action] {
        guard !hasStoodDown else { return [] }
        seededBackup = nil
        if standing == .protected {
            standing = .fencing
            needingSince = now
        }
        return decide()
    }

    /// The store took the write in flight.
    public mutating func written(now: UInt64) -> [Action] {
        guard let record = inFlight else { preconditionFailure("an answer with no write in flight") }
        inFlight = nil
        return adopt(record, now: now)
    }

    /// The store refused the write in flight: `current` is what it holds.
    public mutating func lost(current: GenerationRecord?, now: UInt64) -> [Action] {
        guard inFlight != nil else { preconditionFailure("an answer with no write in flight") }
        inFlight = nil
        // An earlier write of ours whose answer was lost (it timed out, and was applied): ours.
        if let current, current.holder == holder, current.generation >= generation { return adopt(current, now: now) }
        let reason = current.map { "lost the primary role: \($0)" } ?? "lost the primary role: the generation record is gone"
        return standDown(reason)
    }

    /// The store did not answer the write in flight; `now` decides whether to give up.
    public mutating func unreachable(_ reason: String, now: UInt64) -> [Action] {
        guard inFlight != nil else { preconditionFailure("an answer with no write in flight") }
        if let needingSince, now - needingSince >= fenceTimeoutNanos {
            inFlight = nil
            return standDown("could not reach the generation store for \((now - needingSince) / 1_000_000) ms (--fence-timeout): \(reason)")
        }
        return [.retryLater]
    }

    /// The write to retry, as things stand now (the backup may have come or gone meanwhile).
    public mutating func retry() -> [Action] {
        guard let record = inFlight else { return [] }
        inFlight = nil
        // The first claim has nothing to reconsider; a later write may no longer be wanted (a
        // backup to record that is gone). Dropping one that did happen unseen is safe: the next
        // write finds it (`lost` adopts what this process wrote).
        if standing == .claiming { return [issue(record)] }
        return decide()
    }

    // MARK: Rules

    private mutating func adopt(_ record: GenerationRecord, now: UInt64) -> [Action] {
        assert(record.holder == holder && record.generation > generation, "a primary adopts only newer generations of its own")
        generation = record.generation
        needingSince = nil
        var actions: [Action] = []
        switch record.standing {
        case .alone:
            let wasHolding = standing != .alone
            standing = .alone
            if wasHolding { actions.append(.releaseEverything(generation: generation)) }
        case .protected:
            // Recorded protected by a backup that is gone since, it protects nothing, and its
            // generation must not be served alone: hold until the next one is won alone.
            let backupStayed = seededBackup == record.backup
            if standing != .fencing { actions.append(.startHolding(generation: generation, backup: backupStayed ? record.backup : nil)) }
            standing = backupStayed ? .protected : .fencing
            if !backupStayed { needingSince = now }
        case .stopped:
            preconditionFailure("a primary never writes itself stopped while it serves")
        }
        return actions + decide()
    }

    private mutating func decide() -> [Action] {
        guard inFlight == nil, let action = nextWrite(), case .write(let record, _) = action else { return [] }
        return [issue(record)]
    }

    /// The write the current standing calls for, if any.
    private func nextWrite() -> Action? {
        switch standing {
        case .claiming, .stoodDown, .protected: return nil
        case .fencing: return .write(.next(after: generation, holder: holder, standing: .alone), ifGeneration: generation)
        case .alone:
            guard let seededBackup else { return nil }
            return .write(.next(after: generation, holder: holder, standing: .protected, backup: seededBackup), ifGeneration: generation)
        }
    }

    private mutating func issue(_ record: GenerationRecord) -> Action {
        precondition(inFlight == nil, "one write at a time")
        inFlight = record
        return .write(record, ifGeneration: record.generation - 1)
    }

    private mutating func standDown(_ reason: String) -> [Action] {
        standing = .stoodDown(reason)
        seededBackup = nil
        return [.standDown(reason)]
    }
}
