import CCompression

/// How one block of memory travels (DESIGN.md, "Replication"; issue 5): as it is, as "all
/// zeros", as its XOR against the copy the receiver already holds (mostly zeros when a few bytes
/// changed), or either of those compressed with lz4 or zstd. The sender tries them and keeps the
/// smallest; the receiver needs only the tag, the bytes and, for a delta, its own copy.
public enum BlockEncoding: UInt8, CaseIterable, Sendable {
    case raw = 0
    case zero = 1
    case xorDelta = 2
    case lz4 = 3
    case zstd = 4
    case lz4XorDelta = 5
    case zstdXorDelta = 6

    var isDelta: Bool { self == .xorDelta || self == .lz4XorDelta || self == .zstdXorDelta }
}

public enum BlockEncodingError: Error, Equatable, CustomStringConvertible {
    case deltaWithoutBase
    case sizeMismatch(expected: Int, found: Int)
    case corrupt(String)

    public var description: String {
        switch self {
        case .deltaWithoutBase: return "a delta-encoded block arrived for a block the receiver does not hold"
        case .sizeMismatch(let expected, let found): return "a block decodes to \(found) bytes, not \(expected)"
        case .corrupt(let reason): return "a compressed block is corrupt: \(reason)"
        }
    }
}

public enum BlockCodec {
    /// The smallest encoding of `block`; `previous` is the receiver's copy of the same block, if
    /// it holds one (the same length). zstd runs at level 1: a checkpoint is on the pause's
    /// critical path for remus, and level 1 already finds what there is in memory pages.
    public static func encode(_ block: UnsafeRawBufferPointer, previous: UnsafeRawBufferPointer? = nil) -> (BlockEncoding, [UInt8]) {
        if block.allSatisfy({ $0 == 0 }) { return (.zero, []) }
        var best: (BlockEncoding, [UInt8]) = (.raw, Array(block))
        func consider(_ encoding: BlockEncoding, _ bytes: [UInt8]?) {
            if let bytes, bytes.count < best.1.count { best = (encoding, bytes) }
        }
        consider(.lz4, lz4Compress(block))
        consider(.zstd, zstdCompress(block))
        if let previous, previous.count == block.count {
            var delta = [UInt8](repeating: 0, count: block.count)
            for index in 0..<block.count { delta[index] = block[index] ^ previous[index] }
            delta.withUnsafeBytes { delta in
                consider(.lz4XorDelta, lz4Compress(delta))
                consider(.zstdXorDelta, zstdCompress(delta))
            }
            consider(.xorDelta, delta)
        }
        return best
    }

    /// Rebuilds a block of `count` bytes; `previous` is this side's copy (needed for deltas).
    public static func decode(
        _ encoding: BlockEncoding, _ bytes: [UInt8], count: Int, previous: UnsafeRawBufferPointer? = nil
    ) throws(BlockEncodingError) -> [UInt8] {
        var plain: [UInt8]
        switch encoding {
        case .zero: return [UInt8](repeating: 0, count: count)
        case .raw, .xorDelta: plain = bytes
        case .lz4, .lz4XorDelta: plain = try lz4Decompress(bytes, count: count)
        case .zstd, .zstdXorDelta: plain = try zstdDecompress(bytes, count: count)
        }
        guard plain.count == count else { throw .sizeMismatch(expected: count, found: plain.count) }
        guard encoding.isDelta else { return plain }
        guard let previous, previous.count == count else { throw .deltaWithoutBase }
        for index in 0..<count { plain[index] ^= previous[index] }
        return plain
    }

    static func lz4Compress(_ input: UnsafeRawBufferPointer) -> [UInt8]? {
        guard input.count > 0, input.count <= Int(Int32.max) else { return nil }
        let bound = Int(LZ4_compressBound(Int32(input.count)))
        var output = [UInt8](repeating: 0, count: bound)
        let written = output.withUnsafeMutableBytes { out in
            LZ4_compress_default(
                input.baseAddress!.assumingMemoryBound(to: CChar.self), out.baseAddress!.assumingMemoryBound(to: CChar.self),
                Int32(input.count), Int32(bound))
        }
        guard written > 0 else { return nil }
        output.removeSubrange(Int(written)...)
        return output
    }

    static func lz4Decompress(_ input: [UInt8], count: Int) throws(BlockEncodingError) -> [UInt8] {
        guard !input.isEmpty, count <= Int(Int32.max) else { throw .corrupt("lz4: empty") }
        var output = [UInt8](repeating: 0, count: count)
        let written = input.withUnsafeBytes { inBytes in
            output.withUnsafeMutableBytes { out in
                LZ4_decompress_safe(
                    inBytes.baseAddress!.assumingMemoryBound(to: CChar.self), out.baseAddress!.assumingMemoryBound(to: CChar.self),
                    Int32(input.count), Int32(count))
            }
        }
        guard written == Int32(count) else { throw .corrupt("lz4 decoded \(written) bytes of \(count)") }
        return output
    }

    static func zstdCompress(_ input: UnsafeRawBufferPointer) -> [UInt8]? {
        guard input.count > 0 else { return nil }
        let bound = ZSTD_compressBound(input.count)
        var output = [UInt8](repeating: 0, count: bound)
        let written = output.withUnsafeMutableBytes { out in ZSTD_compress(out.baseAddress, bound, input.baseAddress, input.count, 1) }
        guard ZSTD_isError(written) == 0 else { return nil }
        output.removeSubrange(written...)
        return output
    }

    static func zstdDecompress(_ input: [UInt8], count: Int) throws(BlockEncodingError) -> [UInt8] {
        var output = [UInt8](repeating: 0, count: count)
        let written = input.withUnsafeBytes { inBytes in
            output.withUnsafeMutableBytes { out in ZSTD_decompress(out.baseAddress, count, inBytes.baseAddress, input.count) }
        }
        guard ZSTD_isError(written) == 0 else { throw .corrupt("zstd: \(String(cString: ZSTD_getErrorName(written)))") }
        guard written == count else { throw .corrupt("zstd decoded \(written) bytes of \(count)") }
        return output
    }
}
