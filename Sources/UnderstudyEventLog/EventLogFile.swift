import Foundation
import UnderstudyCore

/// The event log on disk, `events.log` beside the checkpoints. Batches are appended with one
/// write each, so a process killed between batches leaves whole records; a cut or damaged record
/// is refused when read. The machine's thread writes; the recorder's writer queue only fsyncs.
public final class EventLogFile: EventLogSink, @unchecked Sendable {
    public let url: URL
    private let fd: Int32

    public init(creating url: URL, moduleHash: String) throws(EventLogError) {
        self.url = url
        fd = open(url.path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw .unreadable("cannot create \(url.path): \(String(cString: strerror(errno)))") }
        try writeAll(EventLogCodec.header(moduleHash: moduleHash))
    }

    deinit { close(fd) }

    public func write(_ bytes: [UInt8], first: UInt64) throws { try writeAll(bytes) }

    /// Makes what was written durable: the recorder calls it before a checkpoint names a log
    /// position, so no checkpoint points past the log.
    public func synchronize() throws(EventLogError) {
        guard fsync(fd) == 0 else { throw .unreadable("cannot flush \(url.path): \(String(cString: strerror(errno)))") }
    }

    private func writeAll(_ bytes: [UInt8]) throws(EventLogError) {
        if let failure = bytes.withUnsafeBytes({ FileDescriptorWriting.writeAll(fd, $0) }) {
            throw .unreadable("cannot write \(url.path): \(String(cString: strerror(failure)))")
        }
    }

    public static func read(_ url: URL) throws(EventLogError) -> EventLog {
        let bytes: [UInt8]
        do {
            bytes = Array(try Data(contentsOf: url))
        } catch {
            throw .unreadable("\(url.path): \((error as NSError).localizedDescription)")
        }
        return try EventLogCodec.decode(bytes)
    }
}
