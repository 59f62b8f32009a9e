import UnderstudyCore
import XCTest

@testable import UnderstudyReplication

final class BlockEncodingTests: XCTestCase {
    private func roundTrip(_ block: [UInt8], previous: [UInt8]?) throws -> BlockEncoding {
        let (encoding, bytes) = block.withUnsafeBytes { block in
            previous.map { previous in previous.withUnsafeBytes { BlockCodec.encode(block, previous: $0) } }
                ?? BlockCodec.encode(block)
        }
        XCTAssertLessThanOrEqual(bytes.count, block.count, "the chosen encoding is never larger than the block")
        let decoded = try previous.map { previous in
            try previous.withUnsafeBytes { previous throws(BlockEncodingError) in
                try BlockCodec.decode(encoding, bytes, count: block.count, previous: previous)
            }
        } ?? BlockCodec.decode(encoding, bytes, count: block.count)
        XCTAssertEqual(decoded, block, "\(encoding) does not round-trip")
        return encoding
    }

    func testRandomBlocksOfEverySizeRoundTripAgainstRandomBases() throws {
        var random = SeededGenerator(seed: 5)
        var seen: Set<BlockEncoding> = []
        for round in 0..<400 {
            let size = [64, 128, 256, 4096][round % 4]
            var previous = (0..<size).map { _ in UInt8.random(in: 0...255, using: &random) }
            if round % 5 == 0 { previous = [UInt8](repeating: UInt8(round % 3), count: size) }
            var block = previous
            switch round % 6 {
            case 0: block = [UInt8](repeating: 0, count: size)
            case 1: block = (0..<size).map { _ in UInt8.random(in: 0...255, using: &random) }
            case 2: for _ in 0..<3 { block[Int.random(in: 0..<size, using: &random)] &+= 1 }
            case 3: block = (0..<size).map { UInt8(($0 / 16) % 4) }
            case 4: block.replaceSubrange(0..<size / 2, with: repeatElement(7, count: size / 2))
            default: break
            }
            seen.insert(try roundTrip(block, previous: round % 7 == 0 ? nil : previous))
        }
        XCTAssertTrue(seen.isSuperset(of: [.zero, .raw]), "\(seen)")
        XCTAssertTrue(seen.contains { $0.isDelta }, "a block with 3 bytes changed should travel as a delta: \(seen)")
        XCTAssertTrue(seen.contains { $0 == .lz4 || $0 == .zstd }, "\(seen)")
    }

    func testEveryCompressorRoundTripsAndCutInputIsRefused() throws {
        let block = (0..<4096).map { UInt8(($0 * 7 / 13) % 251) }
        let lz4 = try XCTUnwrap(block.withUnsafeBytes { BlockCodec.lz4Compress($0) })
        let zstd = try XCTUnwrap(block.withUnsafeBytes { BlockCodec.zstdCompress($0) })
        XCTAssertEqual(try BlockCodec.decode(.lz4, lz4, count: 4096), block)
        XCTAssertEqual(try BlockCodec.decode(.zstd, zstd, count: 4096), block)
        XCTAssertThrowsError(try BlockCodec.decode(.lz4, Array(lz4.prefix(lz4.count / 2)), count: 4096))
        XCTAssertThrowsError(try BlockCodec.decode(.zstd, Array(zstd.prefix(zstd.count / 2)), count: 4096))
        XCTAssertThrowsError(try BlockCodec.decode(.raw, [1, 2, 3], count: 4096)) { error in
            XCTAssertEqual(error as? BlockEncodingError, .sizeMismatch(expected: 4096, found: 3))
        }
        XCTAssertThrowsError(try BlockCodec.decode(.xorDelta, block, count: 4096)) { error in
            XCTAssertEqual(error as? BlockEncodingError, .deltaWithoutBase)
        }
    }
}

final class CheckpointPackingTests: XCTestCase {
    func testACompressibleCheckpointTravelsCompressedAndExpandsExactly() throws {
        let checkpoint = (0..<200_000).map { UInt8(($0 / 64) % 7) }
        var packer = StreamPacker()
        let message = WireMessage.packing(epoch: 4, checkpoint: checkpoint, with: &packer)
        guard case .compressedCheckpoint(4, _, 200_000, let bytes) = message else { return XCTFail("\(message.kind)") }
        XCTAssertLessThan(bytes.count, checkpoint.count / 10)
        let decoded = try WireCodec.decodePayload(type: 10, WireCodec.encode(message, sequence: 0)[WireCodec.headerBytes...].dropLast(4))
        XCTAssertEqual(try decoded.unpackedCheckpoint()?.bytes, checkpoint)
        XCTAssertEqual(try decoded.unpackedCheckpoint()?.epoch, 4)
    }

    func testAnIncompressibleCheckpointTravelsAsItIs() throws {
        var random = SeededGenerator(seed: 9)
        let checkpoint = (0..<50_000).map { _ in UInt8.random(in: 0...255, using: &random) }
        var packer = StreamPacker()
        XCTAssertEqual(WireMessage.packing(epoch: 2, checkpoint: checkpoint, with: &packer), .checkpoint(epoch: 2, bytes: checkpoint))
    }

    func testALyingSizeOrBadBytesAreRefusedNotTrusted() {
        var packer = StreamPacker()
        let packed = WireMessage.packing(epoch: 1, checkpoint: [UInt8](repeating: 1, count: 10_000), with: &packer)
        guard case .compressedCheckpoint(let epoch, let encoding, _, let bytes) = packed else { return XCTFail() }
        XCTAssertThrowsError(try WireMessage.compressedCheckpoint(epoch: epoch, encoding: encoding, size: 9_999, bytes: bytes).unpackedCheckpoint())
        XCTAssertThrowsError(try WireMessage.compressedCheckpoint(epoch: epoch, encoding: encoding, size: 10_000, bytes: Array(bytes.dropLast(3))).unpackedCheckpoint())
        XCTAssertThrowsError(try WireMessage.compressedCheckpoint(epoch: epoch, encoding: .xorDelta, size: 10_000, bytes: bytes).unpackedCheckpoint())
    }
}

/// A stream's packer: both compressors only on samples, one between them, chosen by the numbers.
final class StreamPackerTests: XCTestCase {
    private func random(_ count: Int, seed: UInt64) -> [UInt8] {
        var generator = SeededGenerator(seed: seed)
        return (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) }
    }

    func testTheChoiceFollowsTheSampledBytesAndEveryMessageExpandsExactly() throws {
        // Runs of one byte: both pack them to almost nothing, and lz4 is the faster.
        var runs = StreamPacker()
        for index in 0..<StreamPacker.samplesNeeded {
            let bytes = (0..<50_000).map { UInt8(($0 / 512 + index) % 5) }
            XCTAssertEqual(try runs.pack(bytes).unpacked(), bytes)
        }
        XCTAssertEqual(runs.choice, .lz4)
        // Text-like bytes zstd packs far better than lz4.
        var words = StreamPacker()
        let vocabulary: [[UInt8]] = (0..<64).map { word in random(3 + word % 9, seed: UInt64(word)).map { 97 + $0 % 26 } + [32] }
        var generator = SeededGenerator(seed: 7)
        for _ in 0..<StreamPacker.samplesNeeded {
            var bytes: [UInt8] = []
            for _ in 0..<8_000 { bytes += vocabulary[Int.random(in: 0..<64, using: &generator)] }
            XCTAssertEqual(try words.pack(bytes).unpacked(), bytes)
        }
        XCTAssertEqual(words.choice, .zstd)
        // Random bytes: neither compressor is run between samples, and they travel as they are.
        var noise = StreamPacker()
        for seed in 0..<UInt64(StreamPacker.samplesNeeded) { _ = noise.pack(random(20_000, seed: seed)) }
        XCTAssertEqual(noise.choice, .raw)
        let raw = random(20_000, seed: 99)
        XCTAssertEqual(noise.pack(raw), PackedBytes(encoding: .raw, size: 20_000, bytes: raw))
        // The stream changes: the next round of samples changes the choice.
        for _ in 0..<(StreamPacker.resampleEvery + StreamPacker.samplesNeeded * StreamPacker.resampleEvery) {
            let zeros = [UInt8](repeating: 0, count: 4_096)
            XCTAssertEqual(try noise.pack(zeros).unpacked(), zeros)
        }
        XCTAssertEqual(noise.choice, .lz4)
    }
}

