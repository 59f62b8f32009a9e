import CUnderstudyHost
import Glibc

public enum DirtyTrackingError: Error, CustomStringConvertible {
    case unavailable(String)
    case scanFailed(String)

    public var description: String {
        switch self {
        case .unavailable(let reason): return "userfaultfd write-protect tracking is unavailable: \(reason)"
        case .scanFailed(let reason): return "PAGEMAP_SCAN failed: \(reason)"
        }
    }
}

/// Asks the kernel which 4 KiB pages of the guest's memory were written since the last call:
/// userfaultfd asynchronous write-protect marks them, PAGEMAP_SCAN lists and re-protects them
/// in one step (DESIGN.md, "Dirty memory"). Nothing is read or hashed.
public final class UserfaultDirtyTracker {
    private static let pageSize = 4_096
    private let uffd: Int32
    private let pagemap: Int32
    private var tracked: (base: UnsafeRawPointer, bytes: Int)?

    public init() throws(DirtyTrackingError) {
        let fd = understudy_uffd_open()
        guard fd >= 0 else { throw .unavailable(hostErrorText(-fd)) }
        let pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC)
        guard pagemap >= 0 else {
            Glibc.close(fd)
            throw .unavailable("/proc/self/pagemap: \(hostErrorText())")
        }
        uffd = fd
        self.pagemap = pagemap
    }

    deinit {
        Glibc.close(uffd)
        Glibc.close(pagemap)
    }

    /// Pages written since the previous call; the first call, and pages memory grew by, count
    /// as written (the same contract as the hashing tracker).
    public func dirtyPages(of memory: UnsafeRawBufferPointer) throws(DirtyTrackingError) -> [UInt32] {
        guard let base = memory.baseAddress else { return [] }
        let pageCount = memory.count / Self.pageSize
        guard let tracked, tracked.base == base else {
            try track(base, from: 0, to: memory.count)
            return (0..<UInt32(pageCount)).map { $0 }
        }
        var dirty = try scan(base, bytes: tracked.bytes)
        if memory.count > tracked.bytes {
            try track(base, from: tracked.bytes, to: memory.count)
            dirty += (UInt32(tracked.bytes / Self.pageSize)..<UInt32(pageCount)).map { $0 }
        }
        return dirty
    }

    private func track(_ base: UnsafeRawPointer, from start: Int, to end: Int) throws(DirtyTrackingError) {
        let result = understudy_uffd_track(uffd, UnsafeMutableRawPointer(mutating: base + start), UInt64(end - start))
        guard result == 0 else { throw .unavailable("register: \(hostErrorText(-result))") }
        tracked = (base, end)
    }

    private func scan(_ base: UnsafeRawPointer, bytes: Int) throws(DirtyTrackingError) -> [UInt32] {
        // Every range is at least one page, so this many always suffice for one walk.
        var ranges = [understudy_page_range](repeating: .init(), count: bytes / Self.pageSize / 2 + 1)
        let count = understudy_pagemap_scan(
            pagemap, UnsafeMutableRawPointer(mutating: base), UInt64(bytes), &ranges, UInt64(ranges.count))
        guard count >= 0 else { throw .scanFailed(hostErrorText(Int32(-count))) }
        var pages: [UInt32] = []
        let origin = UInt64(UInt(bitPattern: base))
        for range in ranges.prefix(Int(count)) {
            let first = (range.start - origin) / UInt64(Self.pageSize)
            let last = (range.end - origin) / UInt64(Self.pageSize)
            pages += (UInt32(first)..<UInt32(last)).map { $0 }
        }
        return pages
    }
}
