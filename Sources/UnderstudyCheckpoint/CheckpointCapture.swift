import Foundation
import UnderstudyMachine

/// Takes checkpoints of one machine while it is suspended: the first full, then only the pages
/// written since the previous one (userfaultfd, or hashing where the kernel refuses it). Pages
/// are copied out into a buffer that comes back to a pool once the checkpoint has been written
/// or sent, so the next pause copies into memory that is already mapped instead of faulting on
/// every page (measured: most of the pause). Shared by the recorder and the primary.
public final class CheckpointCapture {
    public let moduleHash: String
    public let tracksDirtyPagesInKernel: Bool
    private let kernelTracker: UserfaultDirtyTracker?
    private var hashingTracker = HashingDirtyTracker()
    private let pool = PageBufferPool()
    /// Checkpoints taken since the last full one (0: the next is full).
    public private(set) var taken = 0

    public init(moduleHash: String, kernelTracking: Bool = true) {
        self.moduleHash = moduleHash
        kernelTracker = kernelTracking ? try? UserfaultDirtyTracker() : nil
        tracksDirtyPagesInKernel = kernelTracker != nil
    }

    /// The next checkpoint is full again (a new backup needs everything).
    public func startOver() { taken = 0 }

    /// The start of a pre-copy (kernel tracking only; nil without it): tracking starts afresh now,
    /// and the memory is handed out to be copied *while the guest runs*. That is sound because
    /// linear memory stays mapped at one address (`.mprotect` bounds checking) and every page the
    /// guest writes meanwhile is reported dirty, so the next `capture` — a delta — makes the copy
    /// exact. The memory must not be read after the machine is gone.
    public func beginPrecopy(_ machine: Machine) throws -> (memory: UnsafeRawBufferPointer, rest: MachineState)? {
        guard let kernelTracker else { return nil }
        let rest = try machine.captureStateExceptMemory()
        let memory = try machine.withLinearMemory { memory -> UnsafeRawBufferPointer in
            _ = try kernelTracker.dirtyPages(of: memory)
            return memory
        }
        taken = 1
        return (memory, rest)
    }

    /// The pages written since the previous call (or capture), ascending, copying nothing: an
    /// `active` backup compares them at a sync. The first call starts tracking and lists every page.
    public func writtenPages(_ machine: Machine) throws -> [UInt32] {
        try machine.withLinearMemory { memory in
            try kernelTracker?.dirtyPages(of: memory) ?? hashingTracker.dirtyPages(of: memory)
        }.sorted()
    }

    /// Captures `machine`, suspended, at log position `logPosition`.
    public func capture(_ machine: Machine, logPosition: UInt64) throws -> CapturedCheckpoint {
        let rest = try machine.captureStateExceptMemory()
        var pageBuffer = pool.take()
        let checkpoint = try machine.withLinearMemory { memory -> Checkpoint in
            if taken == 0 {
                // The trackers start over from this full copy.
                if let kernelTracker { _ = try kernelTracker.dirtyPages(of: memory) } else { _ = hashingTracker.dirtyPages(of: memory) }
                return Checkpoint.full(memory: memory, rest: rest, moduleHash: moduleHash, logPosition: logPosition)
            }
            let dirty = try kernelTracker?.dirtyPages(of: memory) ?? hashingTracker.dirtyPages(of: memory)
            return Checkpoint.delta(
                memory: memory, rest: rest, dirtyPages: dirty, moduleHash: moduleHash, logPosition: logPosition,
                pageBuffer: &pageBuffer)
        }
        taken += 1
        defer { pageBuffer = [] }
        return CapturedCheckpoint(checkpoint: checkpoint, pageBuffer: pageBuffer, pool: pool)
    }
}

/// A checkpoint on its way out (to disk or to a backup), and the buffer its pages live in. Once
/// it is out, `recycle()` drops the checkpoint first so the buffer is uniquely referenced again,
/// then returns the buffer to the pool. May cross to a writer thread.
public final class CapturedCheckpoint: @unchecked Sendable {
    public private(set) var checkpoint: Checkpoint?
    private var pageBuffer: [UInt8]
    private let pool: PageBufferPool

    init(checkpoint: Checkpoint, pageBuffer: [UInt8], pool: PageBufferPool) {
        self.checkpoint = checkpoint
        self.pageBuffer = pageBuffer
        self.pool = pool
    }

    public var pageCount: Int { checkpoint.map { $0.pages.count + $0.zeroPages.count } ?? 0 }

    public func recycle() {
        checkpoint = nil
        let buffer = pageBuffer
        pageBuffer = []
        pool.give(buffer)
    }
}

/// Page buffers whose checkpoints are out; at most two are kept.
final class PageBufferPool: @unchecked Sendable {
    private let lock = NSLock()
    private var free: [[UInt8]] = []

    func take() -> [UInt8] { lock.withLock { free.popLast() ?? [] } }

    func give(_ buffer: [UInt8]) {
        guard buffer.capacity > 0 else { return }
        lock.withLock { if free.count < 2 { free.append(buffer) } }
    }
}
