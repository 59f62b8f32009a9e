import Foundation
import UnderstudyMachine

/// A recording's checkpoints: `checkpoint-000001.ckpt` (full), then deltas, in order. Restoring
/// checkpoint N applies 1…N; a missing or damaged one stops the restore with its reason.
public struct CheckpointDirectory {
    public let url: URL

    public init(_ url: URL) { self.url = url }

    public func fileURL(sequence: Int) -> URL {
        url.appendingPathComponent(String(format: "checkpoint-%06d.ckpt", sequence))
    }

    /// Sequence numbers present, ascending.
    public func sequences() throws(CheckpointError) -> [Int] {
        let names: [String]
        do {
            names = try FileManager.default.contentsOfDirectory(atPath: url.path)
        } catch {
            throw .unreadable("\(url.path): \((error as NSError).localizedDescription)")
        }
        return names.compactMap { name -> Int? in
            guard name.hasPrefix("checkpoint-"), name.hasSuffix(".ckpt") else { return nil }
            return Int(name.dropFirst("checkpoint-".count).dropLast(".ckpt".count))
        }.sorted()
    }

    /// The machine state at checkpoint `sequence` (default: the latest), checked against the
    /// module it will be restored into.
    public func state(at sequence: Int? = nil, moduleHash: String) throws(CheckpointError) -> (sequence: Int, state: MachineState) {
        let available = try sequences()
        guard let target = sequence ?? available.last else { throw .unreadable("\(url.path) holds no checkpoints") }
        guard available.contains(target) else { throw .unreadable("checkpoint \(target) is not in \(url.path)") }
        var state: MachineState?
        for number in available where number <= target {
            let checkpoint = try CheckpointFile.read(fileURL(sequence: number))
            guard checkpoint.moduleHash == moduleHash else {
                throw .malformed("checkpoint \(number) belongs to module \(checkpoint.moduleHash.prefix(16)), not \(moduleHash.prefix(16))")
            }
            if checkpoint.kind == .full { state = nil }
            state = try checkpoint.apply(to: state)
        }
        guard let state else { throw .malformed("no full checkpoint before \(target)") }
        return (target, state)
    }
}

/// Writes a checkpoint each time the machine is suspended for one: full first, then only the
/// pages written since — as the kernel reports them (`UserfaultDirtyTracker`), or, where that is
/// refused, as hashing finds them.
public struct CheckpointRecorder {
    public let directory: CheckpointDirectory
    private let moduleHash: String
    private var tracker = HashingDirtyTracker()
    public private(set) var written = 0

    public init(directory: URL, moduleHash: String) throws(CheckpointError) {
        do {
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        } catch {
            throw .unreadable("cannot create \(directory.path): \((error as NSError).localizedDescription)")
        }
        self.directory = CheckpointDirectory(directory)
        self.moduleHash = moduleHash
    }

    /// Returns the number of pages the checkpoint carried. `dirtyPages` are the kernel tracker's
    /// answer for this state; without it the recorder hashes the pages itself.
    @discardableResult
    public mutating func record(_ state: MachineState, dirtyPages: [UInt32]? = nil) throws(CheckpointError) -> Int {
        let dirty = dirtyPages ?? tracker.dirtyPages(of: state.memory)
        // The event log (issue 3) will give the real position; until then every checkpoint is a
        // restore point of its own.
        let checkpoint = written == 0
            ? Checkpoint.full(of: state, moduleHash: moduleHash, logPosition: 0)
            : Checkpoint.delta(of: state, dirtyPages: dirty, moduleHash: moduleHash, logPosition: 0)
        try CheckpointFile.write(checkpoint, to: directory.fileURL(sequence: written + 1))
        written += 1
        return checkpoint.pages.count
    }
}
