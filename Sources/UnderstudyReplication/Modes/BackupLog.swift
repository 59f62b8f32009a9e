import UnderstudyEventLog

/// What an `llm` backup holds of the event log: the entries after its latest applied
/// checkpoint, in order, with no gap. A batch of records is checked whole (sequence, lengths,
/// checksums) before any of it is kept, so a damaged or out-of-place batch leaves the held log
/// as it was (DESIGN.md invariant 3, atomic apply). Batches are kept as they arrived and decoded
/// only when they are replayed: a backup that is never promoted never decodes an entry.
public struct BackupLog: Sendable {
    /// Records as they arrived, checked but not decoded.
    public struct Batch: Sendable {
        /// The log position of the first record.
        public let first: UInt64
        public let count: Int
        public let records: [UInt8]

        public var end: UInt64 { first + UInt64(count) }

        /// The batch's entries from log position `position` on, up to the first that does not
        /// decode (`damage`: why).
        public func entries(from position: UInt64) -> (entries: ArraySlice<EventLogEntry>, damage: EventLogError?) {
            let (all, damage) = EventLogCodec.decodeRecordPrefix(records[...], first: first)
            return (all[min(all.count, Int(position > first ? position - first : 0))...], damage)
        }
    }

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

    /// The position of the latest applied checkpoint: the first held entry's.
    public private(set) var start: UInt64
    /// One past the last held entry: what the backup acknowledges (`logHeld`).
    public private(set) var end: UInt64
    /// The held entries, in arrival order; the first may begin before `start`.
    public private(set) var batches: [Batch] = []

    public init(startingAt position: UInt64 = 0) {
        start = position
        end = position
    }

    public var entryCount: Int { Int(end - start) }

    /// Appends a batch of encoded records whose first entry is `first`.
    public mutating func append(records bytes: [UInt8], first: UInt64) throws(Refusal) {
        guard first == end else { throw .gap(expected: end, found: first) }
        let count: Int
        do {
            count = try EventLogCodec.checkRecords(bytes[...], first: first)
        } catch {
            throw .damaged(error)
        }
        guard count > 0 else { return }
        batches.append(Batch(first: first, count: count, records: bytes))
        end += UInt64(count)
    }

    /// The held entries, decoded (a promotion replays them). A record that was whole and
    /// checksummed but does not decode came so from the primary: the entries before it are
    /// returned, with the reason.
    public func decodedEntries() -> (entries: [EventLogEntry], damage: EventLogError?) {
        var entries: [EventLogEntry] = []
        entries.reserveCapacity(entryCount)
        for batch in batches {
            let (decoded, damage) = batch.entries(from: start)
            entries += decoded
            if let damage { return (entries, damage) }
        }
        return (entries, nil)
    }

    /// Takes every held batch, leaving the log empty at its end: what an `active` backup hands the
    /// machine that follows it.
    public mutating func takeBatches() -> [Batch] {
        defer {
            batches = []
            start = end
        }
        return batches
    }

    /// A checkpoint at log position `position` is now applied: the entries before it are no longer
    /// needed to reproduce the machine.
    public mutating func checkpointApplied(at position: UInt64) throws(Refusal) {
        guard position <= end else { throw .checkpointBeyondLog(position: position, end: end) }
        guard position > start else { return }
        batches.removeFirst(batches.prefix { $0.end <= position }.count)
        start = position
    }
}
