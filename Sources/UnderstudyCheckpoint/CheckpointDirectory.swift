import Foundation
import UnderstudyMachine

/// A recording: `manifest.json`, the guest's `module.wasm`, `events.log`, and checkpoints
/// `checkpoint-000001.ckpt` (full), then deltas, in order. Restoring checkpoint N applies 1…N; a
/// missing or damaged one stops the restore with its reason.
public struct CheckpointDirectory: Sendable {
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

    public var eventLogURL: URL { url.appendingPathComponent("events.log") }

    public func checkpoint(_ sequence: Int) throws(CheckpointError) -> Checkpoint {
        try CheckpointFile.read(fileURL(sequence: sequence))
    }

    /// The machine state at checkpoint `sequence` (default: the latest), checked against the
    /// module it will be restored into, and the event-log position it corresponds to.
    public func state(
        at sequence: Int? = nil, moduleHash: String
    ) throws(CheckpointError) -> (sequence: Int, state: MachineState, logPosition: UInt64) {
        let available = try sequences()
        guard let target = sequence ?? available.last else { throw .unreadable("\(url.path) holds no checkpoints") }
        guard available.contains(target) else { throw .unreadable("checkpoint \(target) is not in \(url.path)") }
        var state: MachineState?
        var logPosition: UInt64 = 0
        for number in available where number <= target {
            let checkpoint = try self.checkpoint(number)
            guard checkpoint.moduleHash == moduleHash else {
                throw .malformed("checkpoint \(number) belongs to module \(checkpoint.moduleHash.prefix(16)), not \(moduleHash.prefix(16))")
            }
            try checkpoint.apply(onto: &state)
            logPosition = checkpoint.logPosition
        }
        guard let state else { throw .malformed("no full checkpoint before \(target)") }
        return (target, state, logPosition)
    }
}
