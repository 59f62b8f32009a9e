/// Packs one stream's messages (a primary's checkpoints, a seed's parts) with one compressor,
/// not both: compressing every message with lz4 and zstd to keep the smaller cost both on every
/// checkpoint. It tries both on the first `samplesNeeded` messages, and on every `resampleEvery`th
/// after them, and keeps what packed the sampled bytes best: zstd only when it saves a twentieth
/// of their size over lz4 (lz4 is several times faster, and both squeeze zeros to nothing), and
/// nothing at all when neither makes them smaller (random or already compressed data, as a seed
/// of such memory is).
public struct StreamPacker: Sendable {
    public static let samplesNeeded = 4
    public static let resampleEvery = 64

    /// What is used between samples: `.lz4`, `.zstd` or `.raw`; nil until the first samples are in.
    public private(set) var choice: BlockEncoding?
    private var sampled = (raw: 0, lz4: 0, zstd: 0)
    private var samples = 0
    private var sinceSample = 0

    public init() {}

    public mutating func pack(_ bytes: [UInt8]) -> PackedBytes {
        let unpacked = PackedBytes(encoding: .raw, size: UInt32(clamping: bytes.count), bytes: bytes)
        guard bytes.count >= 256, bytes.count <= Int(UInt32.max) else { return unpacked }
        sinceSample += 1
        guard let choice, sinceSample < Self.resampleEvery else { return sample(bytes) }
        let packed: [UInt8]?
        switch choice {
        case .lz4: packed = bytes.withUnsafeBytes { BlockCodec.lz4Compress($0) }
        case .zstd: packed = bytes.withUnsafeBytes { BlockCodec.zstdCompress($0) }
        default: packed = nil
        }
        guard let packed, packed.count < bytes.count else { return unpacked }
        return PackedBytes(encoding: choice, size: UInt32(bytes.count), bytes: packed)
    }

    /// Both compressors on `bytes`; the smaller result is sent, and counted toward the choice.
    private mutating func sample(_ bytes: [UInt8]) -> PackedBytes {
        sinceSample = 0
        let lz4 = bytes.withUnsafeBytes { BlockCodec.lz4Compress($0) }
        let zstd = bytes.withUnsafeBytes { BlockCodec.zstdCompress($0) }
        if samples >= Self.samplesNeeded { (sampled, samples) = ((0, 0, 0), 0) }  // a new round of samples
        samples += 1
        sampled.raw += bytes.count
        sampled.lz4 += min(lz4?.count ?? bytes.count, bytes.count)
        sampled.zstd += min(zstd?.count ?? bytes.count, bytes.count)
        if samples >= Self.samplesNeeded {
            if sampled.lz4 - sampled.zstd > sampled.raw / 20 { choice = .zstd }
            else if sampled.lz4 < sampled.raw { choice = .lz4 }
            else { choice = .raw }
        }
        let best = [(BlockEncoding.lz4, lz4), (.zstd, zstd)].compactMap { encoding, packed in packed.map { (encoding, $0) } }
            .min { $0.1.count < $1.1.count }
        guard let (encoding, packed) = best, packed.count < bytes.count else {
            return PackedBytes(encoding: .raw, size: UInt32(bytes.count), bytes: bytes)
        }
        return PackedBytes(encoding: encoding, size: UInt32(bytes.count), bytes: packed)
    }
}
