import Foundation
import UnderstudyCore

/// Checkpoints on disk. Written to a temporary name, flushed, renamed only when complete, and
/// the directory flushed too: a crash mid-write leaves the previous checkpoint usable.
public enum CheckpointFile {
    public static func write(_ checkpoint: Checkpoint, to url: URL) throws(CheckpointError) {
        let bytes = CheckpointCodec.encode(checkpoint)
        let temporary = url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).partial")
        let directory = url.deletingLastPathComponent().path
        let fd = open(temporary.path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw .unreadable("cannot create \(temporary.path): \(String(cString: strerror(errno)))") }
        let failure = bytes.withUnsafeBytes { FileDescriptorWriting.writeAll(fd, $0) } ?? (fsync(fd) == 0 ? nil : errno)
        close(fd)
        guard failure == nil, rename(temporary.path, url.path) == 0 else {
            let reason = String(cString: strerror(failure ?? errno))
            unlink(temporary.path)
            throw .unreadable("cannot write \(url.path): \(reason)")
        }
        let directoryFD = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if directoryFD >= 0 {
            fsync(directoryFD)
            close(directoryFD)
        }
    }

    public static func read(_ url: URL) throws(CheckpointError) -> Checkpoint {
        let bytes: [UInt8]
        do {
            bytes = Array(try Data(contentsOf: url))
        } catch {
            throw .unreadable("\(url.path): \((error as NSError).localizedDescription)")
        }
        return try CheckpointCodec.decode(bytes)
    }
}
