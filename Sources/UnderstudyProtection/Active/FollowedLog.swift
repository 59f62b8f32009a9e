import Foundation
import UnderstudyEventLog
import UnderstudyReplication

/// The event log an `active` backup's machine follows while it arrives: entries and sync points
/// are added in the order the primary sent them (the connection's order), and the machine's
/// thread takes them, waiting at the end for more. A sync point for position P is always added
/// before any entry at or after P (the primary sends it before it resumes its guest), so a
/// machine stopped at P that finds entries past P knows no sync is coming there.
///
/// Ends in one of two ways: `finish()` (the backup is promoted: the machine replays what is left,
/// then goes live) or `abandon()` (the session is over without a takeover: the machine halts).
final class FollowedLog: EventLogSource, @unchecked Sendable {
    private let condition = NSCondition()
    /// Position of `entries[0]`.
    private var base: Int
    private var entries: [EventLogEntry] = []
    private var syncs: [UInt64: SyncPoint] = [:]
    private var repairs: [UInt64: BlockPatch] = [:]
    private var ended = false
    private var wasAbandoned = false
    private var acceptedMost: UInt64 = 0

    /// The session ended without a takeover.
    var abandoned: Bool { condition.withLock { wasAbandoned } }
    /// The highest connection any entry so far accepted: a takeover numbers new ones above it.
    var highestAccepted: UInt64 { condition.withLock { acceptedMost } }

    init(startingAt position: UInt64) {
        base = Int(position)
        reached = base
    }

    /// The position the machine asked for last: how far it has followed.
    private var reached: Int

    /// One past the last entry added.
    var end: Int { condition.withLock { base + entries.count } }
    /// Entries held that the machine has not reached yet.
    var behind: Int { condition.withLock { max(0, base + entries.count - reached) } }

    func append(_ batch: [EventLogEntry]) {
        let accepted = batch.compactMap(\.acceptedConnection).map(\.value).max() ?? 0
        condition.withLock {
            entries += batch
            acceptedMost = max(acceptedMost, accepted)
            condition.broadcast()
        }
    }

    func mark(_ sync: SyncPoint) {
        condition.withLock {
            syncs[sync.position] = sync
            condition.broadcast()
        }
    }

    func deliver(_ repair: BlockPatch, for sync: UInt64) {
        condition.withLock {
            repairs[sync] = repair
            condition.broadcast()
        }
    }

    func finish() {
        condition.withLock {
            ended = true
            condition.broadcast()
        }
    }

    func abandon() {
        condition.withLock {
            ended = true
            wasAbandoned = true
            condition.broadcast()
        }
    }

    func entry(at position: Int) -> EventLogEntry? {
        condition.withLock {
            reached = max(reached, position)
            while position >= base + entries.count && !ended { condition.wait() }
            guard position >= base, position < base + entries.count, !wasAbandoned else { return nil }
            return entries[position - base]
        }
    }

    /// At a suspension at `position`: the sync point there, waiting for it until the log shows
    /// there is none (entries past it arrived) or the log ends.
    func syncPoint(at position: Int) -> SyncPoint? {
        condition.withLock {
            while syncs[UInt64(position)] == nil && position >= base + entries.count && !ended { condition.wait() }
            let point = syncs[UInt64(position)]
            // This one and any older are done with: the machine never comes back to them.
            syncs = syncs.filter { $0.key > UInt64(position) }
            return ended ? nil : point
        }
    }

    /// The repair for `sync`, waiting for it; nil if the log ends first.
    func repair(for sync: UInt64) -> BlockPatch? {
        condition.withLock {
            while repairs[sync] == nil && !ended { condition.wait() }
            defer { repairs = repairs.filter { $0.key > sync } }  // older ones are never waited for now
            return repairs[sync]
        }
    }

    /// Drops the entries before `position`: the machine has consumed them.
    func trim(below position: Int) {
        condition.withLock {
            let drop = min(max(0, position - base), entries.count)
            guard drop > 0 else { return }
            entries.removeFirst(drop)
            base += drop
        }
    }
}
