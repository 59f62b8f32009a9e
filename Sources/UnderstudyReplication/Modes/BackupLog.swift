import UnderstudyEventLog

/// What an `llm` backup holds of the event log: the entries after its latest applied
/// checkpoint, in order, with no gap. A batch of records is checked whole (sequence, checksums,
/// contents) before any of it is kept, so a damaged or out-of-place batch leaves the held log as
/// it was (DESIGN.md invariant 3, atomic apply).
public struct BackupLog: Sendable {
    public enum Refusal: Error, Equatable, CustomStringConvertible {
        /// The batch does not start where the held log ends.
        case gap(expected: UInt64, found: UInt64)
        case damaged(EventLogError)
        /// A checkpoint was said to be applied at a position the log has not reached.
        case checkpointBeyondLog(position: UInt64, end: UInt64)

        public var description: String {
            switch self {
            case .gap(let expected, let found): return "log records start at entry \(found), expected \(expected)"
            case .damaged(let error): return "log records refused: \(error)"
            case .checkpointBeyondLog(let position, let end):
                return "a checkpoint at log position \(position) is beyond the held log, which ends at \(end)"
            }
        }
    }

    /// Log position of `entries[0]`: the position of the latest applied checkpoint.
    public private(set) var start: UInt64
    public private(set) var entries: [EventLogEntry] = []

    public init(startingAt position: UInt64 = 0) { start = position }

    /// One past the last held entry: what the backup acknowledges (`logHeld`).
    public var end: UInt64 { start + UInt64(entries.count) }

    /// Appends a batch of encoded records whose first entry is `first`.
    public mutating func append(records bytes: [UInt8], first: UInt64) throws(Refusal) {
        guard first == end else { throw .gap(expected: end, found: first) }
        do {
            entries += try EventLogCodec.decodeRecords(bytes[...], first: first)
        } catch {
            throw .damaged(error)
        }
    }

    /// A checkpoint at log position `position` is now applied: the entries before it are no longer
    /// needed to reproduce the machine.
    public mutating func checkpointApplied(at position: UInt64) throws(Refusal) {
        guard position <= end else { throw .checkpointBeyondLog(position: position, end: end) }
        guard position > start else { return }
        entries.removeFirst(Int(position - start))
        start = position
    }
}
