import Foundation
import UnderstudyCore
import UnderstudyEventLog
import UnderstudyMachine

/// Re-executes a recording: restores one of its checkpoints in a fresh machine, feeds it the
/// event log from that checkpoint's position, and — verifying — compares the replayed machine
/// with every later checkpoint as it reaches that checkpoint's log position. Outputs are checked
/// by the `ReplayWorld` as they happen.
public struct ReplayVerifier {
    public struct Report: Sendable {
        public var startCheckpoint: Int
        public var startPosition: Int
        public var endPosition: Int
        public var logEntries: Int
        public var checkpointsVerified: Int
        public var verifiedOutputBytes: UInt64
        public var suspensions: Int
        public var elapsedNanos: UInt64
        /// The guest's exit code, when the recording ends with the guest exiting.
        public var exitCode: Int32?
    }

    public enum Failure: Error, CustomStringConvertible {
        case divergence(String)
        case unusable(String)

        public var description: String {
            switch self {
            case .divergence(let reason): return reason
            case .unusable(let reason): return "cannot replay: \(reason)"
            }
        }
    }

    public let directory: CheckpointDirectory
    private let preparer: ModulePreparer

    public init(directory: URL, preparer: ModulePreparer = ModulePreparer()) {
        self.directory = CheckpointDirectory(directory)
        self.preparer = preparer
    }

    /// Replays from checkpoint `start` (default: the first) to the end of the log. `progress`
    /// is told each verified checkpoint's sequence number.
    public func replay(from start: Int? = nil, verify: Bool = true, progress: ((Int) -> Void)? = nil) throws -> Report {
        let began = ContinuousClock.now
        let manifest = try RecordingManifest.read(from: directory.url)
        let moduleURL = directory.url.appendingPathComponent(RecordingManifest.moduleFileName)
        let prepared = try preparer.prepare(path: moduleURL.path)
        guard prepared.hash == manifest.moduleHash else {
            throw Failure.unusable("\(moduleURL.path) prepares to \(prepared.hash.prefix(16)), the manifest names \(manifest.moduleHash.prefix(16))")
        }
        let log = try EventLogFile.read(directory.eventLogURL)
        guard log.moduleHash == manifest.moduleHash else { throw Failure.unusable("the event log belongs to another module") }
        let sequences = try directory.sequences()
        guard let first = start ?? sequences.first else { throw Failure.unusable("\(directory.url.path) holds no checkpoints") }
        let (_, initial, position) = try directory.state(at: first, moduleHash: manifest.moduleHash)
        guard position <= UInt64(log.entries.count) else {
            throw Failure.unusable("checkpoint \(first) is at log position \(position), past the log's \(log.entries.count) entries")
        }

        let world = ReplayWorld(entries: log.entries, startingAt: Int(position))
        let machine = try Machine(
            restoring: initial, prepared: prepared, world: world, suspension: SuspensionRequest(),
            configuration: manifest.configuration)

        var expected: MachineState? = initial
        var later = sequences.filter { $0 > first }[...]
        var upcoming = try later.popFirst().map { ($0, try directory.checkpoint($0)) }
        var verified = 0
        var failure: Failure?
        if verify {
            machine.onSuspended = { machine in
                guard let (sequence, checkpoint) = upcoming, checkpoint.logPosition <= UInt64(world.position) else { return }
                guard checkpoint.logPosition == UInt64(world.position) else {
                    failure = .divergence(
                        "checkpoint \(sequence) at log position \(checkpoint.logPosition) was never reached: the replayed guest suspended at \(world.position - 1), past it")
                    throw failure!
                }
                try checkpoint.apply(onto: &expected)
                if let difference = try machine.captureState().firstDifference(from: expected!) {
                    failure = .divergence("divergence at checkpoint \(sequence) (log position \(checkpoint.logPosition)): \(difference)")
                    throw failure!
                }
                verified += 1
                progress?(sequence)
                upcoming = try later.popFirst().map { ($0, try directory.checkpoint($0)) }
            }
        }

        var exitCode: Int32?
        do {
            exitCode = try machine.run()
        } catch let error {
            if let failure { throw failure }
            if let divergence = world.divergence { throw Failure.divergence(divergence) }
            guard world.reachedEnd, case .halted = error else { throw Failure.divergence("the replayed machine stopped: \(error)") }
        }
        if verify, let (missed, checkpoint) = upcoming, checkpoint.logPosition <= UInt64(log.entries.count) {
            throw Failure.divergence(
                "checkpoint \(missed) at log position \(checkpoint.logPosition) was never reached: the replay ended at \(world.position)")
        }
        return Report(
            startCheckpoint: first, startPosition: Int(position), endPosition: world.position, logEntries: log.entries.count,
            checkpointsVerified: verified, verifiedOutputBytes: world.verifiedOutputBytes, suspensions: machine.statistics.count,
            elapsedNanos: RecordingSession.nanos(since: began), exitCode: exitCode)
    }
}
