import Foundation
import UnderstudyCheckpoint
import UnderstudyCore
import UnderstudyMachine
import XCTest

final class CheckpointCodecTests: XCTestCase {
    private let hash = String(repeating: "ab", count: 32)

    /// A state with zero pages, random pages and a page differing in one byte, from a seed.
    private func state(seed: UInt64, pages: Int = 64) -> MachineState {
        var generator = SeededGenerator(seed: seed)
        var memory = [UInt8](repeating: 0, count: pages * Checkpoint.pageSize)
        for page in 0..<pages where page % 3 != 0 {
            let start = page * Checkpoint.pageSize
            // Raw generator output, not the standard library's `random(in:)`, whose algorithm
            // may change between Swift versions: the pinned encoding depends on these bytes.
            for offset in stride(from: 0, to: Checkpoint.pageSize, by: Int(generator.next() % 64) + 1) {
                memory[start + offset] = UInt8(generator.next() % 255) + 1
            }
        }
        let descriptors = DescriptorTable(entries: [
            .init(kind: .stdin, nonblocking: false), .init(kind: .console(.stdout), nonblocking: false),
            .init(kind: .console(.stderr), nonblocking: false), .init(kind: .listener(.init(0)), nonblocking: true), nil,
            .init(kind: .connection(.init(seed)), nonblocking: true),
        ])
        return MachineState(
            memory: memory,
            globals: [
                .init(name: "__stack_pointer", kind: .i32, bits: 65_536 + seed % 1000),
                .init(name: "understudy.global.1", kind: .i64, bits: seed &* 7),
            ],
            descriptors: descriptors, unwindDataAddress: 40_960)
    }

    func testFullCheckpointRoundTripsAndElidesZeroPages() throws {
        for seed in 0..<20 as Range<UInt64> {
            let original = state(seed: seed)
            let checkpoint = Checkpoint.full(of: original, moduleHash: hash, logPosition: seed)
            XCTAssertEqual(checkpoint.pages.count, 64 - 22, "every third page is zero and elided")
            let bytes = CheckpointCodec.encode(checkpoint)
            XCTAssertLessThan(bytes.count, original.memory.count)
            let decoded = try CheckpointCodec.decode(bytes)
            XCTAssertEqual(decoded, checkpoint)
            XCTAssertEqual(try decoded.apply(to: nil), original)
        }
    }

    func testDeltaCarriesOnlyDirtyPagesAndAppliesOntoItsBase() throws {
        let base = state(seed: 1)
        var next = base
        next.memory[5 * Checkpoint.pageSize + 17] ^= 0xff  // changed
        next.memory.replaceSubrange(
            (7 * Checkpoint.pageSize)..<(8 * Checkpoint.pageSize), with: repeatElement(0, count: Checkpoint.pageSize))  // zeroed
        next.memory += [UInt8](repeating: 9, count: 2 * Checkpoint.pageSize)  // grown
        next.globals[0].bits += 16
        let delta = Checkpoint.delta(of: next, dirtyPages: [5, 7, 64, 65], moduleHash: hash, logPosition: 2)
        XCTAssertEqual(delta.pages.map(\.index), [5, 64, 65])
        XCTAssertEqual(delta.zeroPages, [7])
        let decoded = try CheckpointCodec.decode(CheckpointCodec.encode(delta))
        XCTAssertEqual(try decoded.apply(to: base), next)
        XCTAssertThrowsError(try decoded.apply(to: nil)) { XCTAssertEqual($0 as? CheckpointError, .deltaWithoutBase) }
    }

    /// Every corrupted byte and every cut is refused with a reason; nothing is half-decoded.
    func testCorruptAndTruncatedBytesAreRefused() throws {
        let bytes = CheckpointCodec.encode(Checkpoint.full(of: state(seed: 9, pages: 8), moduleHash: hash, logPosition: 1))
        var generator = SeededGenerator(seed: 42)
        for _ in 0..<300 {
            var corrupt = bytes
            let offset = Int.random(in: 0..<bytes.count, using: &generator)
            corrupt[offset] ^= UInt8.random(in: 1...255, using: &generator)
            XCTAssertThrowsError(try CheckpointCodec.decode(corrupt), "flip at \(offset)") { error in
                XCTAssertFalse("\(error)".isEmpty)
            }
        }
        for _ in 0..<300 {
            let cut = Int.random(in: 0..<bytes.count, using: &generator)
            XCTAssertThrowsError(try CheckpointCodec.decode(Array(bytes[0..<cut])), "cut at \(cut)")
        }
        XCTAssertThrowsError(try CheckpointCodec.decode(bytes + [0])) { error in
            XCTAssertEqual(error as? CheckpointError, .malformed("bytes after the end record"))
        }
        XCTAssertThrowsError(try CheckpointCodec.decode(Array("hello world".utf8))) {
            XCTAssertEqual($0 as? CheckpointError, .notACheckpoint)
        }
    }

    func testOtherFormatVersionIsRefusedByName() throws {
        var bytes = CheckpointCodec.encode(Checkpoint.full(of: state(seed: 3, pages: 2), moduleHash: hash, logPosition: 0))
        // The header is the first record: magic (8) + type (1) + length (4), then the version.
        bytes[13] = 9
        let headerLength = Int(bytes[9]) | Int(bytes[10]) << 8
        let crcOffset = 8 + 5 + headerLength
        let crc = CRC32C.checksum(bytes[8..<crcOffset])
        withUnsafeBytes(of: crc.littleEndian) { bytes.replaceSubrange(crcOffset..<crcOffset + 4, with: $0) }
        XCTAssertThrowsError(try CheckpointCodec.decode(bytes)) { error in
            XCTAssertEqual(error as? CheckpointError, .unsupportedVersion(9))
        }
    }

    /// Pins the encoding of a known state: an accidental format change fails here and must come
    /// with a `formatVersion` bump (and a new pinned digest).
    func testEncodingOfAKnownStateIsPinned() {
        let bytes = CheckpointCodec.encode(Checkpoint.full(of: state(seed: 5, pages: 4), moduleHash: hash, logPosition: 77))
        XCTAssertEqual(SHA256.hex(of: bytes), Self.pinnedDigest)
    }
    static let pinnedDigest = "bdf109b3d270c25e6651797ffdf353a27928cf024fff485dd60afe4c6b326292"

    /// A pre-copy seed travels as parts: applied in order, through the codec, they are the whole
    /// state; a later part alone names none of the zero pages it spans.
    func testPartsOfAMemoryApplyToTheWholeState() throws {
        let original = state(seed: 11, pages: 10)
        var applied: MachineState?
        try original.memory.withUnsafeBytes { memory in
            for (index, start) in stride(from: UInt32(0), to: 10, by: 4).enumerated() {
                let part = Checkpoint.part(
                    of: memory, pages: start..<min(start + 4, 10), first: index == 0, rest: original, moduleHash: hash, logPosition: 0)
                XCTAssertEqual(part.kind, index == 0 ? .full : .delta)
                XCTAssertEqual(part.memoryBytes, UInt64(memory.count))
                XCTAssertEqual(part.zeroPages, [])
                XCTAssertTrue(part.pages.allSatisfy { (start..<start + 4).contains($0.index) }, "part \(index) strays from its pages")
                try CheckpointCodec.decode(CheckpointCodec.encode(part)).apply(onto: &applied)
                if index == 0 { XCTAssertNotEqual(applied, original, "the first part alone is not the whole memory") }
            }
        }
        XCTAssertEqual(applied, original)
    }

    func testFileWriteIsAtomicAndReadsBack() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("ckpt-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let url = directory.appendingPathComponent("0001.ckpt")
        let first = Checkpoint.full(of: state(seed: 1, pages: 4), moduleHash: hash, logPosition: 1)
        try CheckpointFile.write(first, to: url)
        XCTAssertEqual(try CheckpointFile.read(url), first)
        // A torn write leaves only a partial temporary file: the checkpoint itself is intact.
        try Data(CheckpointCodec.encode(first).prefix(100)).write(to: directory.appendingPathComponent(".0001.ckpt.partial"))
        XCTAssertEqual(try CheckpointFile.read(url), first)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: directory.path).filter { !$0.hasPrefix(".") }, ["0001.ckpt"])
        XCTAssertThrowsError(try CheckpointFile.read(directory.appendingPathComponent("missing.ckpt")))
    }
}

final class CRC32CTests: XCTestCase {
    func testKnownVector() {
        XCTAssertEqual(CRC32C.checksum(Array("123456789".utf8)), 0xE306_9283)
        XCTAssertEqual(CRC32C.checksum(Array("56789".utf8), continuing: CRC32C.checksum(Array("1234".utf8))), 0xE306_9283)
    }
}

final class HashingDirtyTrackerTests: XCTestCase {
    func testReportsExactlyThePagesThatChangedAndEveryGrownPage() {
        var tracker = HashingDirtyTracker()
        var memory = [UInt8](repeating: 0, count: 16 * Checkpoint.pageSize)
        XCTAssertEqual(tracker.dirtyPages(of: memory), Array(0..<16), "the first call sees every page")
        XCTAssertEqual(tracker.dirtyPages(of: memory), [])
        memory[3 * Checkpoint.pageSize] = 1
        memory[9 * Checkpoint.pageSize + 4095] = 2
        memory += [UInt8](repeating: 0, count: 2 * Checkpoint.pageSize)
        XCTAssertEqual(tracker.dirtyPages(of: memory), [3, 9, 16, 17])
        memory[3 * Checkpoint.pageSize] = 0
        XCTAssertEqual(tracker.dirtyPages(of: memory), [3], "a page written back to its old bytes still changed since last time")
    }
}
