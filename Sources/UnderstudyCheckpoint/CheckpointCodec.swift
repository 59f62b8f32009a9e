import UnderstudyCore
import UnderstudyMachine

/// The byte form of a checkpoint, on disk now and on the wire later: magic, then records, each
/// `type u8 | length u32 | payload | CRC-32C u32` (the checksum covers type, length and payload),
/// the first a header carrying the format version, the last an end record counting the others.
/// Decoding builds the whole value before returning, so a bad byte anywhere applies nothing.
///
/// Any change to what is written here requires a `formatVersion` bump; a test pins the bytes.
public enum CheckpointCodec {
    public static let formatVersion: UInt16 = 2
    static let magic: [UInt8] = Array("USTDYCKP".utf8)
    /// Pages per page-run record: bounds one record at 1 MiB of page data.
    static let pagesPerRecord = 256

    enum RecordType: UInt8 {
        case header = 1
        case pages = 2
        case zeroPages = 3
        case globals = 4
        case descriptors = 5
        /// The guest's unwound call chain (`MachineState.unwoundStack`); format 2 on.
        case unwoundStack = 6
        case end = 255
    }

    public static func encode(_ checkpoint: Checkpoint) -> [UInt8] {
        var out = magic
        var records = 0
        func record(_ type: RecordType, _ build: (inout ByteWriter) -> Void) {
            var payload = ByteWriter()
            build(&payload)
            var framed = ByteWriter()
            framed.u8(type.rawValue)
            framed.u32(UInt32(payload.bytes.count))
            framed.raw(payload.bytes)
            framed.u32(CRC32C.checksum(framed.bytes))
            out += framed.bytes
            records += 1
        }
        record(.header) { w in
            w.u16(formatVersion)
            w.u8(checkpoint.kind.rawValue)
            w.string(checkpoint.moduleHash)
            w.u64(checkpoint.logPosition)
            w.u64(checkpoint.memoryBytes)
            w.u32(checkpoint.unwindDataAddress)
        }
        for run in pageRuns(checkpoint.pages) {
            record(.pages) { w in
                w.u32(run.first!.index)
                w.u32(UInt32(run.count))
                for page in run { w.raw(page.bytes) }
            }
        }
        if !checkpoint.zeroPages.isEmpty {
            record(.zeroPages) { w in
                w.u32(UInt32(checkpoint.zeroPages.count))
                checkpoint.zeroPages.forEach { w.u32($0) }
            }
        }
        record(.globals) { w in
            w.u32(UInt32(checkpoint.globals.count))
            for global in checkpoint.globals {
                w.string(global.name)
                w.u8(global.kind.rawValue)
                w.u64(global.bits)
            }
        }
        record(.descriptors) { w in
            w.u32(UInt32(checkpoint.descriptors.entries.count))
            for entry in checkpoint.descriptors.entries { DescriptorCoding.write(entry, to: &w) }
        }
        if !checkpoint.unwoundStack.isEmpty {
            record(.unwoundStack) { w in w.raw(checkpoint.unwoundStack) }
        }
        let counted = UInt32(records)
        record(.end) { w in w.u32(counted) }
        return out
    }

    /// Consecutive page indices share a record, so a 10 000-page delta is not 10 000 headers.
    private static func pageRuns(_ pages: [Checkpoint.Page]) -> [ArraySlice<Checkpoint.Page>] {
        var runs: [ArraySlice<Checkpoint.Page>] = []
        var start = 0
        for index in pages.indices.dropFirst() {
            let contiguous = pages[index].index == pages[index - 1].index + 1
            if !contiguous || index - start == pagesPerRecord {
                runs.append(pages[start..<index])
                start = index
            }
        }
        if !pages.isEmpty { runs.append(pages[start...]) }
        return runs
    }

    public static func decode(_ bytes: [UInt8]) throws(CheckpointError) -> Checkpoint {
        guard bytes.count >= magic.count, Array(bytes[0..<magic.count]) == magic else { throw .notACheckpoint }
        var reader = RecordReader(bytes: bytes, offset: magic.count)
        var decoder = CheckpointDecoder()
        while true {
            let (type, payload) = try reader.next()
            guard let known = RecordType(rawValue: type) else { throw .malformed("unknown record type \(type)") }
            if known == .end {
                try decoder.finish(payload, recordsBefore: reader.recordIndex - 1)
                guard reader.offset == bytes.count else { throw .malformed("bytes after the end record") }
                return try decoder.checkpoint()
            }
            try decoder.add(known, payload)
        }
    }
}

/// Splits the byte stream into checksummed records.
private struct RecordReader {
    let bytes: [UInt8]
    var offset: Int
    var recordIndex = 0

    mutating func next() throws(CheckpointError) -> (UInt8, ArraySlice<UInt8>) {
        let start = offset
        guard bytes.count - offset >= 5 else { throw .truncated(at: bytes.count) }
        let type = bytes[offset]
        let length = Int(bytes[offset + 1]) | Int(bytes[offset + 2]) << 8 | Int(bytes[offset + 3]) << 16 | Int(bytes[offset + 4]) << 24
        guard bytes.count - offset - 5 >= length + 4 else { throw .truncated(at: bytes.count) }
        let framedEnd = offset + 5 + length
        let stored = UInt32(bytes[framedEnd]) | UInt32(bytes[framedEnd + 1]) << 8 | UInt32(bytes[framedEnd + 2]) << 16
            | UInt32(bytes[framedEnd + 3]) << 24
        let computed = bytes.withUnsafeBytes { CRC32C.checksum(UnsafeRawBufferPointer(rebasing: $0[start..<framedEnd])) }
        guard stored == computed else { throw .corruptRecord(index: recordIndex, offset: start) }
        offset = framedEnd + 4
        recordIndex += 1
        return (type, bytes[(start + 5)..<framedEnd])
    }
}
