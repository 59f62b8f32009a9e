import Dispatch
import Foundation
import Metrics
import UnderstudyCore
import UnderstudyEventLog
import UnderstudyMachine

/// Records a running machine into a directory: the event log as the guest consumes the world,
/// and a checkpoint each time the guest is suspended for one — full first, then only the pages
/// written since. While the guest is paused the session only hands the log batch to the file and
/// copies the dirty pages out; encoding, writing and fsync happen on a writer queue, in order
/// (the log is made durable before the checkpoint that points into it).
public final class RecordingSession {
    public struct CheckpointTaken: Sendable {
        public var sequence: Int
        public var pages: Int
        public var logPosition: UInt64
        /// Flushing the log batch, finding dirty pages and copying them: the part of the pause
        /// this session adds.
        public var captureNanos: UInt64
    }

    public let world: RecordingWorld
    public let directory: CheckpointDirectory
    public var tracksDirtyPagesInKernel: Bool { capture.tracksDirtyPagesInKernel }
    private let logFile: EventLogFile
    private let capture: CheckpointCapture
    private let writer = DispatchQueue(label: "understudy.checkpoint-writer")
    private let writeFailure = WriteFailure()
    private let captureTimer = Metrics.Timer(label: "understudy_checkpoint_capture")
    private let pagesRecorder = Recorder(label: "understudy_checkpoint_pages")
    /// Called on the machine's thread after each checkpoint is captured (for logging).
    public var onCheckpoint: ((CheckpointTaken) -> Void)?

    /// Creates the recording in `directory` (manifest, module copy, empty log) around `live`.
    /// Without `kernelTracking` (or when the kernel refuses it) pages are found by hashing.
    public init(
        directory url: URL, module: URL, manifest: RecordingManifest, recording live: MachineWorld, kernelTracking: Bool = true
    ) throws {
        do {
            try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        } catch {
            throw CheckpointError.unreadable("cannot create \(url.path): \((error as NSError).localizedDescription)")
        }
        directory = CheckpointDirectory(url)
        if let stale = try? directory.sequences(), !stale.isEmpty {
            throw CheckpointError.unreadable("\(url.path) already holds a recording; choose an empty directory")
        }
        try manifest.write(to: url, module: module)
        logFile = try EventLogFile(creating: directory.eventLogURL, moduleHash: manifest.moduleHash)
        world = RecordingWorld(recording: live, to: logFile)
        capture = CheckpointCapture(moduleHash: manifest.moduleHash, kernelTracking: kernelTracking)
    }

    /// Makes `machine` take a checkpoint at each of its suspensions. The machine must have been
    /// built on `world`.
    public func attach(to machine: Machine) {
        machine.onSuspended = { [unowned self] machine in try self.checkpoint(machine) }
    }

    private func checkpoint(_ machine: Machine) throws {
        if let failure = writeFailure.reason { throw CheckpointError.unreadable(failure) }
        let began = ContinuousClock.now
        try world.flush()
        let position = world.position
        let captured = try capture.capture(machine, logPosition: position)
        let sequence = capture.taken
        let summary = CheckpointTaken(
            sequence: sequence, pages: captured.pageCount, logPosition: position, captureNanos: Self.nanos(since: began))
        let (logFile, directory, failure) = (logFile, directory, writeFailure)
        writer.async {
            if failure.reason == nil {
                do {
                    try logFile.synchronize()
                    try CheckpointFile.write(captured.checkpoint!, to: directory.fileURL(sequence: sequence))
                } catch {
                    failure.reason = "\(error)"
                }
            }
            captured.recycle()
        }
        captureTimer.recordNanoseconds(Int64(clamping: summary.captureNanos))
        pagesRecorder.record(summary.pages)
        onCheckpoint?(summary)
    }

    /// Writes out the rest of the log and waits for every checkpoint to be on disk.
    public func finish() throws {
        try world.flush()
        let (logFile, failure) = (logFile, writeFailure)
        writer.sync {
            do { try logFile.synchronize() } catch { if failure.reason == nil { failure.reason = "\(error)" } }
        }
        if let reason = writeFailure.reason { throw CheckpointError.unreadable(reason) }
    }

    static func nanos(since start: ContinuousClock.Instant) -> UInt64 { UInt64((ContinuousClock.now - start).nanoseconds) }
}

/// The first failure of the writer queue, reported on the machine's thread at the next checkpoint.
private final class WriteFailure: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: String?
    var reason: String? {
        get { lock.withLock { stored } }
        set { lock.withLock { stored = newValue } }
    }
}
