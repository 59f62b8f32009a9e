import Foundation

/// What the store says about a protected machine (DESIGN.md, "One primary"): which generation is
/// current, who holds the primary role in it, and whether a backup protects it. Every change is
/// one conditional write on the generation the writer last saw, so of two contenders for the next
/// generation exactly one wins. The generation is also the fencing token that every replication
/// frame carries.
public struct GenerationRecord: Codable, Equatable, Sendable, CustomStringConvertible {
    public enum Standing: String, Codable, Sendable {
        /// The holder serves and releases output as it is produced.
        case alone
        /// The holder's output waits for `backup`, which may take over in the next generation.
        case protected
        /// The holder let the machine go (its guest exited): the next primary may claim it.
        case stopped
    }

    public var generation: UInt64
    /// The process that holds the role: unique per process, so a holder can recognise its own
    /// write when the store's answer to it was lost.
    public var holder: String
    public var standing: Standing
    /// The protecting backup (`protected` only).
    public var backup: String?

    public init(generation: UInt64, holder: String, standing: Standing, backup: String? = nil) {
        precondition(generation > 0, "generation 0 is the absence of a record")
        precondition((standing == .protected) == (backup != nil), "a protected record names its backup, and only it")
        self.generation = generation
        self.holder = holder
        self.standing = standing
        self.backup = backup
    }

    /// The record that follows `self` (or none) with `holder` in the given standing.
    public static func next(after current: UInt64, holder: String, standing: Standing, backup: String? = nil) -> GenerationRecord {
        GenerationRecord(generation: current + 1, holder: holder, standing: standing, backup: backup)
    }

    public var description: String {
        "generation \(generation) held by \(holder) (\(standing.rawValue)\(backup.map { ", protected by \($0)" } ?? ""))"
    }
}

/// Where the generation lives: etcd (`EtcdGenerationStore`), or nowhere (`UnfencedGenerationStore`,
/// when no `--etcd` is given, where every write wins and nothing fences a pause or a partition).
public protocol GenerationStore: Sendable {
    /// The current record; nil when the machine has none yet.
    func read() async throws(GenerationStoreError) -> GenerationRecord?
    /// Writes `record` if the current generation is still `expected` (0: none), else returns the
    /// current record. `record.generation` is `expected + 1`.
    func write(_ record: GenerationRecord, ifGeneration expected: UInt64) async throws(GenerationStoreError) -> GenerationWrite
    /// Said in logs: where the record is kept.
    var location: String { get }
}

public enum GenerationWrite: Equatable, Sendable {
    case won
    case lost(current: GenerationRecord?)
}

public enum GenerationStoreError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The store did not answer (the write may or may not have happened).
    case unreachable(String)
    /// The store answered with something that is not a generation record.
    case unreadable(String)

    public var description: String {
        switch self {
        case .unreachable(let reason): return "the generation store is unreachable: \(reason)"
        case .unreadable(let reason): return "the generation record is unreadable: \(reason)"
        }
    }
}

/// No store: every write wins. The pair behaves as it did before fencing existed, and says so.
public final class UnfencedGenerationStore: GenerationStore, @unchecked Sendable {
    private let lock = NSLock()
    private var record: GenerationRecord?

    public init() {}

    public var location: String { "nowhere (no --etcd: nothing fences a pause or a partition)" }

    public func read() async throws(GenerationStoreError) -> GenerationRecord? { lock.withLock { record } }

    public func write(_ record: GenerationRecord, ifGeneration expected: UInt64) async throws(GenerationStoreError) -> GenerationWrite {
        lock.withLock { self.record = record }
        return .won
    }
}
