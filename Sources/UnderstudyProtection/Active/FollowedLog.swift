import Foundation
import UnderstudyEventLog
import UnderstudyReplication

/// The event log an `active` backup's machine follows while it arrives: entries and sync points
/// are added in the order the primary sent them (the connection's order), and the machine's
/// thread takes them, waiting at the end for more. A sync point for position P is always added
/// before any entry at or after P (the primary sends it before it resumes its guest), so a
/// machine stopped at P that finds entries past P knows no sync is coming there.
///
/// Batches arrive checked but undecoded (`BackupLog`) and are decoded on the machine's thread as
/// it reaches them, not on the connection's.
///
/// Ends in one of two ways: `finish()` (the backup is promoted: the machine replays what is left,
/// then goes live) or `abandon()` (the session is over without a takeover: the machine halts).
final class FollowedLog: EventLogSource, @unchecked Sendable {
    private let condition = NSCondition()
    /// Position of `entries[0]`.
    private var base: Int
    private var entries: [EventLogEntry] = []
    /// Batches after `entries`, not decoded yet, and how many entries they hold.
    private var pending: [BackupLog.Batch] = []
    private var pendingCount = 0
    /// Why the log ended early: a batch that was checked as it arrived did not decode (the
    /// machine halts as if the session were abandoned). Under `condition`.
    private var damaged: EventLogError?
    var damage: EventLogError? { condition.withLock { damaged } }
    private var syncs: [UInt64: SyncPoint] = [:]
    private var repairs: [UInt64: BlockPatch] = [:]
    private var ended = false
    private var wasAbandoned = false
    private var acceptedMost: UInt64 = 0

    /// The session ended without a takeover.
    var abandoned: Bool { condition.withLock { wasAbandoned } }
    /// The highest connection any entry so far accepted: a takeover numbers new ones above it.
    var highestAccepted: UInt64 {
        condition.withLock {
            decode(through: nil)
            return acceptedMost
        }
    }

    init(startingAt position: UInt64) {
        base = Int(position)
        reached = base
    }

    /// The position the machine asked for last: how far it has followed.
    private var reached: Int

    /// One past the last entry added. Under `condition`.
    private var held: Int { base + entries.count + pendingCount }
    var end: Int { condition.withLock { held } }
    /// Entries held that the machine has not reached yet.
    var behind: Int { condition.withLock { max(0, held - reached) } }

    /// Batches in log order, from where the log ends; entries of a batch before that (the first
    /// batch of a follower started mid-batch) are left out.
    func append(_ batches: [BackupLog.Batch]) {
        condition.withLock {
            for batch in batches where batch.end > UInt64(held) {
                pending.append(batch)
                pendingCount += Int(batch.end) - max(held, Int(batch.first))
            }
            condition.broadcast()
        }
    }

    /// Under `condition`: decodes the pending batches until `position` is decoded (all of them
    /// for nil). A batch that does not decode ends the log at its first bad entry.
    private func decode(through position: Int?) {
        while !pending.isEmpty, position.map({ $0 >= base + entries.count }) ?? true {
            let batch = pending.removeFirst()
            let (decoded, damage) = batch.entries(from: UInt64(base + entries.count))
            pendingCount -= Int(batch.end) - (base + entries.count)
            entries += decoded
            acceptedMost = max(acceptedMost, decoded.compactMap(\.acceptedConnection).map(\.value).max() ?? 0)
            if let damage {
                damaged = damage
                pending = []
                pendingCount = 0
                endAbandoned()
            }
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

    func abandon() { condition.withLock { endAbandoned() } }

    /// Under `condition`: the machine halts at the end of what it has.
    private func endAbandoned() {
        ended = true
        wasAbandoned = true
        condition.broadcast()
    }

    func entry(at position: Int) -> EventLogEntry? {
        condition.withLock {
            reached = max(reached, position)
            while position >= held && !ended { condition.wait() }
            decode(through: position)
            guard position >= base, position < base + entries.count, !wasAbandoned else { return nil }
            return entries[position - base]
        }
    }

    /// At a suspension at `position`: the sync point there, waiting for it until the log shows
    /// there is none (entries past it arrived) or the log ends.
    func syncPoint(at position: Int) -> SyncPoint? {
        condition.withLock {
            while syncs[UInt64(position)] == nil && position >= held && !ended { condition.wait() }
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
            decode(through: position - 1)
            let drop = min(max(0, position - base), entries.count)
            guard drop > 0 else { return }
            entries.removeFirst(drop)
            base += drop
        }
    }
}
