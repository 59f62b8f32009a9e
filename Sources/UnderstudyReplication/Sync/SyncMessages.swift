import UnderstudyCore

/// What the primary of an `active` pair says at a sync point (DESIGN.md, "Active"): both
/// machines stop at log position `position`; the primary's pages written since the previous sync
/// and its globals and devices hash to `digest`. The backup computes the same over its own
/// written pages: equal digests (the deterministic case) end the sync in one small message each
/// way; otherwise the backup sends block hashes of its written pages and the primary sends the
/// blocks that differ (`BlockPatch`).
public struct SyncPoint: Equatable, Sendable {
    public var sync: UInt64
    public var position: UInt64
    public var dirtyPages: UInt32
    public var digest: UInt64
    /// The block size a backup that differs reports its hashes in.
    public var blockSize: UInt16
    /// `--verify-syncs`: a hash of the primary's whole state at `position`, which the backup
    /// checks once the sync is over (costs a pass over memory on each side).
    public var wholeState: UInt64?

    public init(sync: UInt64, position: UInt64, dirtyPages: UInt32, digest: UInt64, blockSize: UInt16, wholeState: UInt64?) {
        self.sync = sync
        self.position = position
        self.dirtyPages = dirtyPages
        self.digest = digest
        self.blockSize = blockSize
        self.wholeState = wholeState
    }
}

/// The hashes of one page's blocks, in block order.
public struct PageBlockHashes: Equatable, Sendable {
    public var page: UInt32
    public var hashes: [UInt64]

    public init(page: UInt32, hashes: [UInt64]) {
        self.page = page
        self.hashes = hashes
    }
}

/// Block sizes a sync may compare and repair in (FGBI: smaller blocks, fewer bytes per change).
public enum SyncBlockSize {
    public static let allowed = [64, 128, 256, 512, 1024, 2048, 4096]
    public static let standard = 64
}

public enum SyncCodingError: Error, Equatable, CustomStringConvertible {
    case malformed(String)
    public var description: String {
        switch self {
        case .malformed(let reason): return "a sync message is malformed: \(reason)"
        }
    }
}

extension PageBlockHashes {
    /// `page u32 | hash u64 × (4096 / blockSize)` per page, ascending.
    public static func encode(_ pages: [PageBlockHashes]) -> [UInt8] {
        var w = ByteWriter()
        for page in pages {
            w.u32(page.page)
            for hash in page.hashes { w.u64(hash) }
        }
        return w.bytes
    }

    public static func decode(_ bytes: [UInt8], blockSize: Int) throws(SyncCodingError) -> [PageBlockHashes] {
        guard SyncBlockSize.allowed.contains(blockSize) else { throw .malformed("block size \(blockSize)") }
        let perPage = 4096 / blockSize
        let record = 4 + 8 * perPage
        guard bytes.count % record == 0 else { throw .malformed("\(bytes.count) bytes of hashes are not whole pages of \(record)") }
        var r = ByteReader(bytes[...])
        var pages: [PageBlockHashes] = []
        pages.reserveCapacity(bytes.count / record)
        do {
            while !r.isAtEnd {
                let page = try r.u32()
                guard pages.last.map({ $0.page < page }) ?? true else { throw SyncCodingError.malformed("pages out of order at \(page)") }
                var hashes = [UInt64]()
                hashes.reserveCapacity(perPage)
                for _ in 0..<perPage { hashes.append(try r.u64()) }
                pages.append(PageBlockHashes(page: page, hashes: hashes))
            }
        } catch let error as SyncCodingError {
            throw error
        } catch {
            throw .malformed("truncated hashes")
        }
        return pages
    }
}

/// Blocks of memory and the rest of the machine state (opaque here: a checkpoint with no pages,
/// `state`). Two uses: an `active` sync's repair (the differing blocks as they are at the sync's
/// position; `state` empty when globals and devices agreed), and a `remus` or `llm` checkpoint
/// after the seed (the blocks that changed, XORed with the backup's copy).
public struct BlockPatch: Equatable, Sendable {
    public struct Block: Equatable, Sendable {
        /// The block's number in memory: its byte offset is `index × blockSize`.
        public var index: UInt32
        public var bytes: [UInt8]

        public init(index: UInt32, bytes: [UInt8]) {
            self.index = index
            self.bytes = bytes
        }
    }

    public var blockSize: Int
    public var blocks: [Block]
    public var state: [UInt8]

    public init(blockSize: Int, blocks: [Block], state: [UInt8]) {
        self.blockSize = blockSize
        self.blocks = blocks
        self.state = state
    }

    /// `blockSize u16 | count u32 | (index u32 | bytes)… | state`.
    public func encoded() -> [UInt8] {
        var w = ByteWriter()
        w.u16(UInt16(blockSize))
        w.u32(UInt32(blocks.count))
        for block in blocks {
            precondition(block.bytes.count == blockSize, "a repair block of the wrong size")
            w.u32(block.index)
            w.raw(block.bytes)
        }
        w.raw(state)
        return w.bytes
    }

    public static func decode(_ bytes: [UInt8]) throws(SyncCodingError) -> BlockPatch {
        var r = ByteReader(bytes[...])
        do {
            let blockSize = Int(try r.u16())
            guard SyncBlockSize.allowed.contains(blockSize) else { throw SyncCodingError.malformed("block size \(blockSize)") }
            let count = Int(try r.u32())
            guard count <= bytes.count / (4 + blockSize) else { throw SyncCodingError.malformed("\(count) blocks in \(bytes.count) bytes") }
            var blocks: [Block] = []
            blocks.reserveCapacity(count)
            for _ in 0..<count {
                let index = try r.u32()
                blocks.append(Block(index: index, bytes: Array(try r.raw(blockSize))))
            }
            let state = Array(try r.raw(bytes.count - (r.offset - bytes.startIndex)))
            return BlockPatch(blockSize: blockSize, blocks: blocks, state: state)
        } catch let error as SyncCodingError {
            throw error
        } catch {
            throw .malformed("truncated repair")
        }
    }
}
