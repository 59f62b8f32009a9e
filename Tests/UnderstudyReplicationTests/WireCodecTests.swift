import NIOCore
import UnderstudyCore
import XCTest

@testable import UnderstudyReplication

final class WireCodecTests: XCTestCase {
    private let messages: [WireMessage] = [
        .hello(.init(mode: .llm, moduleHash: String(repeating: "c4", count: 32), generation: 9, machine: "kv", moduleBytes: 70_000, memoryLimitBytes: 1 << 26)), .welcome,
        .refusal("wrong module"), .protecting(generation: 7, position: 1234), .handover(generation: 8, position: 99), .takingOver(generation: 9),
        .module(bytes: Array(0..<200), configuration: Array("{}".utf8)), .checkpoint(epoch: 7, bytes: Array(repeating: 9, count: 5000)), .checkpoint(epoch: 8, bytes: []),
        .compressedCheckpoint(epoch: 9, encoding: .zstd, size: 70_000, bytes: Array(repeating: 3, count: 300)),
        .logRecords(first: 1234, bytes: [1, 2, 3]), .checkpointApplied(epoch: 7), .logHeld(position: .max), .heartbeat,
        .syncPoint(SyncPoint(sync: 3, position: 99, dirtyPages: 12, digest: 0xdead_beef, blockSize: 64, wholeState: nil)),
        .syncPoint(SyncPoint(sync: 4, position: 120, dirtyPages: 0, digest: 1, blockSize: 4096, wholeState: 77)),
        .syncMatched(sync: 3), .syncDiffers(sync: 4, blockSize: 128, stateDigest: 5, hashes: Array(repeating: 1, count: 4 + 8 * 32)),
        .syncRepair(sync: 4, repair: PackedBytes(packing: Array(repeating: 0, count: 1000))),
    ]

    private func stream(_ messages: [WireMessage]) -> [UInt8] {
        var encoder = WireEncoder()
        return messages.flatMap { encoder.encode($0) }
    }

    /// Everything decoded from `bytes` fed in pieces, until the stream ends or a frame is refused.
    private func decodeAll(_ bytes: [UInt8], pieces: Int = 1, maximumPayload: Int = Int(UInt32.max)) -> ([WireMessage], WireError?) {
        var decoder = WireDecoder(maximumPayload: maximumPayload)
        var decoded: [WireMessage] = []
        var offset = 0
        let step = max(1, bytes.count / pieces)
        while offset < bytes.count {
            decoder.append(bytes[offset..<min(offset + step, bytes.count)])
            offset += step
            do {
                while let message = try decoder.next() { decoded.append(message) }
            } catch {
                return (decoded, error)
            }
        }
        return (decoded, nil)
    }

    func testEveryMessageRoundTripsWhateverPiecesItArrivesIn() {
        let bytes = stream(messages)
        for pieces in [1, 2, 7, 100, bytes.count] {
            let (decoded, error) = decodeAll(bytes, pieces: pieces)
            XCTAssertNil(error)
            XCTAssertEqual(decoded, messages, "in \(pieces) pieces")
        }
    }

    func testSyncHashesAndRepairsRoundTripAndRefuseDamage() throws {
        var random = SeededGenerator(seed: 11)
        for blockSize in SyncBlockSize.allowed {
            let pages = (0..<5).map { page in
                PageBlockHashes(page: UInt32(page * 3), hashes: (0..<(4096 / blockSize)).map { _ in random.next() })
            }
            let encoded = PageBlockHashes.encode(pages)
            XCTAssertEqual(try PageBlockHashes.decode(encoded, blockSize: blockSize), pages)
            XCTAssertThrowsError(try PageBlockHashes.decode(Array(encoded.dropLast()), blockSize: blockSize))
            XCTAssertThrowsError(try PageBlockHashes.decode(PageBlockHashes.encode(pages.reversed()), blockSize: blockSize), "pages out of order")

            let blocks = (0..<4).map { index in
                BlockPatch.Block(index: UInt32(index * 7), bytes: (0..<blockSize).map { _ in UInt8.random(in: 0...255, using: &random) })
            }
            let repair = BlockPatch(blockSize: blockSize, blocks: blocks, state: [1, 2, 3])
            let bytes = repair.encoded()
            XCTAssertEqual(try BlockPatch.decode(bytes), repair)
            XCTAssertEqual(try BlockPatch.decode(try PackedBytes(packing: bytes).unpacked()), repair)
            // Cut inside the blocks: the state would swallow them, so the count must not fit.
            XCTAssertThrowsError(try BlockPatch.decode(Array(bytes.prefix(6 + (4 + blockSize) * 2))))
        }
        var lying = BlockPatch(blockSize: 64, blocks: [], state: []).encoded()
        lying[2] = 0xff  // claims 255 blocks in 6 bytes
        XCTAssertThrowsError(try BlockPatch.decode(lying))
        XCTAssertThrowsError(try PackedBytes(encoding: .raw, size: 10, bytes: [1]).unpacked())
        // A sync point with a block size no sync uses is refused at the frame.
        var encoder = WireEncoder()
        var frame = encoder.encode(.syncPoint(SyncPoint(sync: 1, position: 2, dirtyPages: 3, digest: 4, blockSize: 64, wholeState: nil)))
        frame[WireCodec.headerBytes + 28] = 65  // blockSize's low byte
        let crc = CRC32C.checksum(frame[WireCodec.headerBytes..<(frame.count - 4)])
        withUnsafeBytes(of: crc.littleEndian) { frame.replaceSubrange((frame.count - 4)..., with: $0) }
        let (decoded, error) = decodeAll(frame)
        XCTAssertEqual(decoded, [])
        XCTAssertEqual(error, .malformed("a sync point's block size is 65"))
    }

    func testEveryFlippedByteIsRefusedAndNothingAfterItIsHandedOn() {
        let bytes = stream(messages)
        var random = SeededGenerator(seed: 3)
        for _ in 0..<500 {
            var damaged = bytes
            let offset = Int.random(in: 0..<bytes.count, using: &random)
            damaged[offset] ^= UInt8.random(in: 1...255, using: &random)
            let (decoded, error) = decodeAll(damaged, pieces: 3)
            XCTAssertNotNil(error, "a flip at byte \(offset) went unnoticed")
            XCTAssertEqual(decoded, Array(messages.prefix(decoded.count)), "a message before the damage changed")
            XCTAssertLessThan(decoded.count, messages.count)
        }
    }

    func testACutStreamWaitsForTheRestAndHandsOnOnlyWholeFrames() {
        let bytes = stream(messages)
        for length in stride(from: 0, to: bytes.count, by: 37) {
            let (decoded, error) = decodeAll(Array(bytes[..<length]))
            XCTAssertNil(error)
            XCTAssertEqual(decoded, Array(messages.prefix(decoded.count)))
            XCTAssertLessThan(decoded.count, messages.count)
        }
    }

    func testOutOfOrderUnknownAndOversizedFramesAreRefusedByName() throws {
        let skipped = WireCodec.encode(.heartbeat, sequence: 0) + WireCodec.encode(.heartbeat, sequence: 2)
        XCTAssertEqual(decodeAll(skipped).1, .outOfOrder(expected: 1, found: 2))

        var unknown = WireCodec.encode(.heartbeat, sequence: 0)
        unknown[16] = 77  // the type, after sequence and generation; both checksums are then recomputed, as a buggy peer would
        let headerCRC = unknown.withUnsafeBytes { CRC32C.checksum(UnsafeRawBufferPointer(rebasing: $0[..<21])) }
        withUnsafeBytes(of: headerCRC.littleEndian) { unknown.replaceSubrange(21..<25, with: $0) }
        XCTAssertEqual(decodeAll(unknown).1, .unknownType(77))

        let big = WireCodec.encode(.module(bytes: Array(repeating: 1, count: 96), configuration: []), sequence: 0)  // + 4 bytes of length
        XCTAssertEqual(decodeAll(big, maximumPayload: 16).1, .tooLarge(bytes: 100, limit: 16))
    }

    /// After the handshake a frame may be as large as the hello's machine can need and no
    /// larger: a 64 MiB machine with a 1 MiB module takes a 96 MiB frame, not one byte more,
    /// refused on the header; a 4 GiB machine takes all a length can say.
    func testTheStreamBoundFollowsTheHellosMachine() throws {
        let small = WireMessage.Hello(mode: .llm, moduleHash: "ab", moduleBytes: 1 << 20, memoryLimitBytes: 64 << 20)
        let bound = WireLimits.streamPayloadMax(for: small)
        XCTAssertEqual(bound, (64 << 20) + (16 << 20) + (16 << 20))
        func header(declaring length: Int) -> [UInt8] {
            var header = Array(WireCodec.encode(.heartbeat, sequence: 0).prefix(21))
            withUnsafeBytes(of: UInt32(length).littleEndian) { header.replaceSubrange(17..<21, with: $0) }
            withUnsafeBytes(of: CRC32C.checksum(header).littleEndian) { header.append(contentsOf: $0) }
            return header
        }
        var fits = WireDecoder(maximumPayload: bound)
        fits.append(header(declaring: bound))
        XCTAssertNil(try fits.next(), "a frame of the bound waits for its payload")
        var past = WireDecoder(maximumPayload: bound)
        past.append(header(declaring: bound + 1))
        XCTAssertThrowsError(try past.next()) { XCTAssertEqual($0 as? WireError, .tooLarge(bytes: UInt64(bound + 1), limit: bound)) }

        let module = WireMessage.Hello(mode: .llm, moduleHash: "ab", moduleBytes: 200 << 20, memoryLimitBytes: 1 << 16)
        XCTAssertEqual(WireLimits.streamPayloadMax(for: module), (200 << 20) + (1 << 20), "the module frame is the largest")
        let largest = WireMessage.Hello(mode: .llm, moduleHash: "ab", moduleBytes: 1 << 20, memoryLimitBytes: 1 << 32)
        XCTAssertEqual(WireLimits.streamPayloadMax(for: largest), WireLimits.streamPayloadMax)
    }

    /// A connection reads frames for as long as it lives: after a large frame, thousands of small
    /// ones, in pieces, leave the decoder holding neither the large one's memory nor more and more
    /// of its own (a buffer copied once per frame grew by a page each time, and kept the module's
    /// 200 KiB, on both ends of every connection).
    func testTheDecodersMemoryStaysBoundedFrameAfterFrame() throws {
        var decoder = WireDecoder()
        var sequence: UInt64 = 0
        func frame(_ message: WireMessage) -> [UInt8] {
            defer { sequence += 1 }
            return WireCodec.encode(message, sequence: sequence)
        }
        let module = frame(.module(bytes: Array(repeating: 7, count: 2 << 20), configuration: []))
        for start in stride(from: 0, to: module.count, by: 65_536) { decoder.append(module[start..<min(start + 65_536, module.count)]) }
        guard case .module(let bytes, _) = try decoder.next() else { return XCTFail("the module frame did not decode") }
        XCTAssertEqual(bytes.count, 2 << 20)
        var largest = 0
        for index in 0..<10_000 {
            let beat = frame(index % 3 == 0 ? .logHeld(position: UInt64(index)) : .heartbeat)
            decoder.append(beat[..<7])
            XCTAssertNil(try decoder.next())
            decoder.append(beat[7...] + frame(.heartbeat))
            XCTAssertNotNil(try decoder.next())
            XCTAssertEqual(try decoder.next(), .heartbeat)
            largest = max(largest, decoder.buffer.capacity)
        }
        XCTAssertEqual(decoder.buffer.bytes, 0)
        XCTAssertLessThan(largest, 64 << 10, "the decoder's buffer grew to \(largest) bytes")
    }

    func testAHelloWithAnUnknownModeIsMalformed() {
        var hello = WireCodec.encode(.hello(.init(mode: .remus, moduleHash: "ab", moduleBytes: 1024, memoryLimitBytes: 1 << 24)), sequence: 0)
        hello[WireCodec.headerBytes + 2] = 9  // the mode byte, after the header and the 2-byte version
        let payloadEnd = hello.count - 4
        let crc = hello.withUnsafeBytes { CRC32C.checksum(UnsafeRawBufferPointer(rebasing: $0[WireCodec.headerBytes..<payloadEnd])) }
        withUnsafeBytes(of: crc.littleEndian) { hello.replaceSubrange(payloadEnd..., with: $0) }
        XCTAssertEqual(decodeAll(hello).1, .malformed("hello names an unknown mode"))
    }

    /// The fencing token: a decoder that knows generation 5 refuses a frame of 4 on its header,
    /// and takes frames of 5 and later.
    func testAFrameOfAnOlderGenerationIsRefused() throws {
        var decoder = WireDecoder()
        decoder.minimumGeneration = 5
        decoder.append(WireCodec.encode(.heartbeat, sequence: 0, generation: 5) + WireCodec.encode(.heartbeat, sequence: 1, generation: 6))
        XCTAssertEqual(try decoder.next(), .heartbeat)
        XCTAssertEqual(try decoder.next(), .heartbeat)
        var fenced = WireDecoder()
        fenced.minimumGeneration = 5
        fenced.append(WireCodec.encode(.heartbeat, sequence: 0, generation: 4))
        XCTAssertThrowsError(try fenced.next()) { XCTAssertEqual($0 as? WireError, .staleGeneration(found: 4, known: 5)) }
    }

    func testAfterARefusedFrameTheDecoderRefusesEverything() throws {
        var decoder = WireDecoder()
        var damaged = WireCodec.encode(.heartbeat, sequence: 0)
        damaged[damaged.count - 1] ^= 1
        decoder.append(damaged)
        XCTAssertThrowsError(try decoder.next())
        decoder.append(WireCodec.encode(.heartbeat, sequence: 1))
        XCTAssertThrowsError(try decoder.next(), "a connection that sent a bad frame is not read further")
    }

    /// Every message encoded ahead (off the event loop) makes exactly the frame it would have
    /// made itself — header after the connection's frames so far, payload, CRC — and decodes
    /// back to itself.
    func testAMessageEncodedAheadIsTheFrameOfTheMessageItself() throws {
        for message in messages {
            let encoded = WireCodec.encoded(message, allocator: ByteBufferAllocator())
            XCTAssertEqual(encoded.kind, message.kind)
            guard case .encoded(let ahead) = encoded else { return XCTFail("\(message.kind) was not encoded") }
            var plain = WireEncoder()
            var early = WireEncoder()
            (plain.generation, early.generation) = (6, 6)
            let lead = plain.encode(.heartbeat)
            _ = early.encode(.heartbeat)
            var bytes = early.encodeHeader(ahead) + Array(ahead.payload.readableBytesView)
            withUnsafeBytes(of: ahead.crc.littleEndian) { bytes += $0 }
            XCTAssertEqual(bytes, plain.encode(message), message.kind)
            XCTAssertEqual(WireCodec.encode(encoded, sequence: 1, generation: 6), bytes, "\(message.kind): the codec frames it the same way")
            XCTAssertEqual(WireCodec.payloadBytes(encoded), WireCodec.payloadBytes(message))
            let (decoded, error) = decodeAll(lead + bytes)
            XCTAssertNil(error, message.kind)
            XCTAssertEqual(decoded.last, message)
        }
    }
}
