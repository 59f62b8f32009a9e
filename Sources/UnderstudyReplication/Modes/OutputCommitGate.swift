/// DESIGN.md invariant 2 (output commit): nothing the guest sends leaves the host before the
/// backup holds what it takes to reproduce it. Each output is held with the position that must
/// be acknowledged first — a log position in `llm` (the send's own entry), an epoch in `remus`
/// (the checkpoint that follows it) — and released, in the order it was produced, once the
/// backup's acknowledgement reaches that position.
public struct OutputCommitGate<Output> {
    public enum AcknowledgementError: Error, Equatable, CustomStringConvertible {
        /// The backup acknowledged less than it already had: a confused or hostile peer.
        case wentBackwards(from: UInt64, to: UInt64)

        public var description: String {
            switch self {
            case .wentBackwards(let from, let to): return "the backup's acknowledgement went back from \(from) to \(to)"
            }
        }
    }

    private var held: [(position: UInt64, output: Output)] = []
    /// `held[..<head]` are already released; compacted as it grows.
    private var head = 0
    /// Every position below this one is acknowledged.
    public private(set) var acknowledged: UInt64 = 0

    public init() {}

    public var heldCount: Int { held.count - head }
    /// The position the oldest held output waits for (for the hold-time metric).
    public var oldestWaitingFor: UInt64? { head < held.count ? held[head].position : nil }
    /// The oldest output still held.
    public var oldest: Output? { head < held.count ? held[head].output : nil }

    /// Holds `output` until every position up to and including `position` is acknowledged, or
    /// hands it straight back when that is already so.
    public mutating func hold(_ output: Output, untilAcknowledged position: UInt64) -> Output? {
        precondition(held.last.map { $0.position <= position } ?? true, "outputs must be held in the order they were produced")
        if position < acknowledged && heldCount == 0 { return output }
        held.append((position, output))
        return nil
    }

    /// Records that every position below `position` is acknowledged, and returns the outputs
    /// that may now leave, oldest first.
    public mutating func acknowledge(below position: UInt64) throws(AcknowledgementError) -> [Output] {
        guard position >= acknowledged else { throw .wentBackwards(from: acknowledged, to: position) }
        acknowledged = position
        var released: [Output] = []
        while head < held.count, held[head].position < position {
            released.append(held[head].output)
            head += 1
        }
        if head > 1024 && head * 2 > held.count {
            held.removeFirst(head)
            head = 0
        }
        return released
    }

    /// Everything still held, oldest first, and the gate emptied: what a primary that has lost
    /// its backup and continues unprotected sends at once.
    public mutating func releaseAll() -> [Output] {
        let released = held[head...].map(\.output)
        held.removeAll()
        head = 0
        return released
    }
}
