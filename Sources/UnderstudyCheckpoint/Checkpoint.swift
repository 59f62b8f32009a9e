import UnderstudyCore
import UnderstudyMachine

/// A machine state as a checkpoint carries it: the whole state (`full`), or only the 4 KiB pages
/// written since the previous checkpoint (`delta`), plus the globals and device state (small,
/// always whole), and the event-log position the state corresponds to.
public struct Checkpoint: Equatable, Sendable {
    public enum Kind: UInt8, Sendable {
        case full = 0
        case delta = 1
    }

    /// The dirty-tracking granularity (DESIGN.md): a host page, not a 64 KiB wasm page.
    public static let pageSize = 4_096

    public struct Page: Equatable, Sendable {
        public var index: UInt32
        /// One page's bytes: a slice of one buffer shared by all the checkpoint's pages (one
        /// allocation per checkpoint, not one per page) or of the file it was read from.
        public var bytes: ArraySlice<UInt8>
    }

    public var kind: Kind
    /// SHA-256 (hex) of the prepared module the state belongs to.
    public var moduleHash: String
    public var logPosition: UInt64
    public var memoryBytes: UInt64
    /// Non-zero pages, ascending. In a full checkpoint every page not listed is zero.
    public var pages: [Page]
    /// Delta only: written pages that are now all zero (elided, like zero pages of a full one).
    public var zeroPages: [UInt32]
    public var globals: [MachineState.GlobalState]
    public var descriptors: DescriptorTable
    public var unwindDataAddress: UInt32
    /// The guest's unwound call chain (`MachineState.unwoundStack`).
    public var unwoundStack: [UInt8] = []

    public static func full(of state: MachineState, moduleHash: String, logPosition: UInt64) -> Checkpoint {
        state.memory.withUnsafeBytes { memory in
            full(memory: memory, rest: state, moduleHash: moduleHash, logPosition: logPosition)
        }
    }

    /// Only `dirtyPages` (the tracker's answer since the previous checkpoint) are carried; pages
    /// added by memory growth must be among them.
    public static func delta<Pages: Sequence>(
        of state: MachineState, dirtyPages: Pages, moduleHash: String, logPosition: UInt64
    ) -> Checkpoint where Pages.Element == UInt32 {
        var buffer: [UInt8] = []
        return state.memory.withUnsafeBytes { memory in
            delta(memory: memory, rest: state, dirtyPages: dirtyPages, moduleHash: moduleHash, logPosition: logPosition, pageBuffer: &buffer)
        }
    }

    /// As `full(of:)`, reading `memory` in place (a suspended machine's linear memory); the
    /// globals and devices come from `rest`, whose own memory is not read.
    public static func full(memory: UnsafeRawBufferPointer, rest: MachineState, moduleHash: String, logPosition: UInt64) -> Checkpoint {
        var buffer: [UInt8] = []
        let count = UInt32(memory.count / pageSize)
        return checkpoint(
            .full, memory: memory, rest: rest, pages: 0..<count, moduleHash: moduleHash, logPosition: logPosition, buffer: &buffer)
    }

    /// One of the parts a whole memory travels in when it is too large for one frame (a backup's
    /// pre-copy seed, a few MiB a frame, so that heartbeats pass between them): the non-zero
    /// pages of `memory` within `pages`. The first part is `full`, every page outside it zero;
    /// the others are deltas onto it, which name no zero pages, since every page they do not
    /// carry is still zero where they apply.
    public static func part(
        of memory: UnsafeRawBufferPointer, pages: Range<UInt32>, first: Bool, rest: MachineState, moduleHash: String, logPosition: UInt64
    ) -> Checkpoint {
        var buffer: [UInt8] = []
        var part = checkpoint(
            first ? .full : .delta, memory: memory, rest: rest, pages: pages, moduleHash: moduleHash, logPosition: logPosition,
            buffer: &buffer)
        part.zeroPages = []
        return part
    }

    /// As `delta(of:)`, copying only the dirty pages out of `memory` in place: the pause a
    /// checkpoint costs the guest grows with the pages written, not with its memory size.
    /// `pageBuffer` holds the copied pages; pass the same one each time and it is reused once
    /// the previous checkpoint built in it has been released.
    public static func delta<Pages: Sequence>(
        memory: UnsafeRawBufferPointer, rest: MachineState, dirtyPages: Pages, moduleHash: String, logPosition: UInt64,
        pageBuffer: inout [UInt8]
    ) -> Checkpoint where Pages.Element == UInt32 {
        checkpoint(
            .delta, memory: memory, rest: rest, pages: dirtyPages, moduleHash: moduleHash, logPosition: logPosition,
            buffer: &pageBuffer)
    }

    private static func checkpoint<Pages: Sequence>(
        _ kind: Kind, memory: UnsafeRawBufferPointer, rest: MachineState, pages indices: Pages, moduleHash: String,
        logPosition: UInt64, buffer: inout [UInt8]
    ) -> Checkpoint where Pages.Element == UInt32 {
        precondition(memory.count % pageSize == 0, "memory is not a whole number of pages")
        let pageCount = memory.count / pageSize
        var sorted = Array(indices)
        sorted.sort()
        // Copied in one pass over guest memory: each page is checked for zero in the buffer,
        // while it is still in cache, and dropped again if it is. The buffer is refilled in
        // place when the previous checkpoint built in it is gone (the recorder recycles it):
        // fresh memory would cost a page fault per page copied.
        buffer.removeAll(keepingCapacity: true)
        buffer.reserveCapacity(sorted.count * pageSize)
        let source = memory.bindMemory(to: UInt8.self)
        var carried: [UInt32] = []
        var zeroPages: [UInt32] = []
        var previous: UInt32?
        for index in sorted where Int(index) < pageCount && index != previous {
            previous = index
            // A typed buffer: appending one is a memcpy, appending a raw one goes byte by byte.
            buffer.append(contentsOf: UnsafeBufferPointer(rebasing: source[Int(index) * pageSize..<(Int(index) + 1) * pageSize]))
            if buffer.withUnsafeBytes({ isZero(UnsafeRawBufferPointer(rebasing: $0[($0.count - pageSize)...])) }) {
                buffer.removeLast(pageSize)
                if kind == .delta { zeroPages.append(index) }
            } else {
                carried.append(index)
            }
        }
        let pages = carried.enumerated().map { slot, index in
            Page(index: index, bytes: buffer[slot * pageSize..<(slot + 1) * pageSize])
        }
        return Checkpoint(
            kind: kind, moduleHash: moduleHash, logPosition: logPosition, memoryBytes: UInt64(memory.count),
            pages: pages, zeroPages: zeroPages, globals: rest.globals, descriptors: rest.descriptors,
            unwindDataAddress: rest.unwindDataAddress, unwoundStack: rest.unwoundStack)
    }

    private static func isZero(_ page: UnsafeRawBufferPointer) -> Bool {
        var accumulated: UInt64 = 0
        for offset in stride(from: 0, to: page.count, by: 8) {
            accumulated |= page.loadUnaligned(fromByteOffset: offset, as: UInt64.self)
        }
        return accumulated == 0
    }

    /// The state this checkpoint describes. A delta needs the state of the checkpoint before it;
    /// the base is not modified, so a failure leaves it intact.
    public func apply(to base: MachineState?) throws(CheckpointError) -> MachineState {
        var state = base
        try apply(onto: &state)
        return state!
    }

    /// As `apply(to:)`, in place: restoring a large memory from many deltas copies it once, not
    /// once per delta. Everything that can fail is checked before `state` is touched.
    public func apply(onto state: inout MachineState?) throws(CheckpointError) {
        switch kind {
        case .full:
            state = MachineState(
                memory: [UInt8](repeating: 0, count: Int(memoryBytes)), globals: globals, descriptors: descriptors,
                unwindDataAddress: unwindDataAddress, unwoundStack: unwoundStack)
        case .delta:
            guard let base = state else { throw .deltaWithoutBase }
            guard UInt64(base.memory.count) <= memoryBytes else {
                throw .malformed("the delta's memory (\(memoryBytes) bytes) is smaller than its base's (\(base.memory.count))")
            }
            state!.memory.append(contentsOf: repeatElement(0, count: Int(memoryBytes) - base.memory.count))
            state!.globals = globals
            state!.descriptors = descriptors
            state!.unwindDataAddress = unwindDataAddress
            state!.unwoundStack = unwoundStack
        }
        state!.memory.withUnsafeMutableBytes { memory in
            let pageCount = memory.count / Self.pageSize
            precondition(
                pages.allSatisfy { Int($0.index) < pageCount && $0.bytes.count == Self.pageSize }
                    && zeroPages.allSatisfy { Int($0) < pageCount },
                "a checkpoint page lies outside its memory (the decoder refuses such input)")
            for page in pages {
                page.bytes.withUnsafeBytes { bytes in
                    (memory.baseAddress! + Int(page.index) * Self.pageSize).copyMemory(from: bytes.baseAddress!, byteCount: Self.pageSize)
                }
            }
            for index in zeroPages {
                (memory.baseAddress! + Int(index) * Self.pageSize).initializeMemory(as: UInt8.self, repeating: 0, count: Self.pageSize)
            }
        }
    }
}

public enum CheckpointError: Error, CustomStringConvertible, Equatable {
    case notACheckpoint
    case unsupportedVersion(UInt16)
    case truncated(at: Int)
    case corruptRecord(index: Int, offset: Int)
    case malformed(String)
    case deltaWithoutBase
    case unreadable(String)

    public var description: String {
        switch self {
        case .notACheckpoint: return "not an understudy checkpoint (bad magic)"
        case .unsupportedVersion(let version):
            return "checkpoint format version \(version) is not supported (this build reads version \(CheckpointCodec.formatVersion))"
        case .truncated(let offset): return "the checkpoint is truncated (ends at byte \(offset))"
        case .corruptRecord(let index, let offset): return "checkpoint record \(index) at byte \(offset) fails its checksum"
        case .malformed(let reason): return "malformed checkpoint: \(reason)"
        case .deltaWithoutBase: return "an incremental checkpoint needs the checkpoint before it"
        case .unreadable(let reason): return "cannot read the checkpoint: \(reason)"
        }
    }
}
