import Foundation
import NIOCore
import UnderstudyEventLog
import UnderstudyReplication

/// `llm`, `active`: the recording's sink. Each batch of log records goes to the seeded backup as
/// the guest consumes the world, and the backup's acknowledgement of the log releases output.
final class LogStream: EventLogSink, @unchecked Sendable {
    /// The recording that writes here (and holds this sink); set once, when it is built.
    weak var recording: RecordingWorld?
    /// The machine's thread: each batch's size, once it is on the wire (`llm` paces its
    /// checkpoints by it).
    var batchSent: ((Int) -> Void)?
    private let link: BackupLink
    private let metrics: ReplicationMetrics
    /// The log position the stream has reached, for the lag metric: written on the machine's
    /// thread, read on the event loop; guarded by `lock`.
    private let lock = NSLock()
    private var sent: UInt64 = 0

    init(link: BackupLink, metrics: ReplicationMetrics) {
        self.link = link
        self.metrics = metrics
    }

    /// The machine's thread (the recording flushes there).
    func write(_ bytes: [UInt8], first: UInt64) throws {
        let end = recording?.position ?? first
        lock.withLock { sent = end }
        guard let channel = link.activeChannel else { return }
        metrics.bytesSent.increment(by: Int64(bytes.count))
        channel.writeAndFlush(WireMessage.logRecords(first: first, bytes: bytes), promise: nil)
        batchSent?(bytes.count)
    }

    /// The event loop: `channel`'s backup holds the log below `position`.
    func held(below position: UInt64, on channel: Channel) throws {
        try link.acknowledged(below: position, on: channel)
        let sent = lock.withLock { self.sent }
        metrics.logLag.record(sent > position ? Int64(sent - position) : 0)
    }
}
