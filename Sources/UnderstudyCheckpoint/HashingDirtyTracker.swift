import UnderstudyMachine

/// Finds the 4 KiB pages that changed since the previous call by hashing every page: the
/// fallback dirty tracker, which needs nothing from the kernel (`UserfaultDirtyTracker` asks the
/// kernel instead of reading all memory).
public struct HashingDirtyTracker: Sendable {
    private var pageHashes: [UInt64] = []

    public init() {}

    /// Pages whose contents differ from the last call, including every page memory grew by.
    public mutating func dirtyPages(of memory: [UInt8]) -> [UInt32] {
        memory.withUnsafeBytes { dirtyPages(of: $0) }
    }

    public mutating func dirtyPages(of bytes: UnsafeRawBufferPointer) -> [UInt32] {
        let pageCount = bytes.count / Checkpoint.pageSize
        var dirty: [UInt32] = []
        for page in 0..<pageCount {
            let hash = Self.hash(bytes[(page * Checkpoint.pageSize)..<((page + 1) * Checkpoint.pageSize)])
            if page >= pageHashes.count {
                pageHashes.append(hash)
                dirty.append(UInt32(page))
            } else if pageHashes[page] != hash {
                pageHashes[page] = hash
                dirty.append(UInt32(page))
            }
        }
        return dirty
    }

    /// FNV-1a over 8-byte words: a change detector, not a cryptographic commitment.
    private static func hash(_ page: Slice<UnsafeRawBufferPointer>) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        let words = UnsafeRawBufferPointer(rebasing: page)
        for offset in stride(from: 0, to: words.count, by: 8) {
            hash = (hash ^ words.loadUnaligned(fromByteOffset: offset, as: UInt64.self)) &* 0x100_0000_01b3
        }
        return hash
    }
}
