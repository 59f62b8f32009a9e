import UnderstudyCore

/// The event log's bytes: a header (magic, format version, module hash, CRC-32C), then one record per
/// entry — `sequence u64 | type u8 | length u32 | payload | CRC-32C` — the checksum covering all
/// before it. The same records stream to a backup (issue 4).
public enum EventLogCodec {
    public static let magic: [UInt8] = Array("USTDYLOG".utf8)
    public static let formatVersion: UInt16 = 1
    static let recordOverhead = 8 + 1 + 4 + 4

    public static func header(moduleHash: String) -> [UInt8] {
        var writer = ByteWriter()
        writer.raw(magic)
        writer.u16(formatVersion)
        writer.string(moduleHash)
        let crc = writer.bytes.withUnsafeBytes { CRC32C.checksum($0) }
        writer.u32(crc)
        return writer.bytes
    }

    /// Appends `entry` as record `sequence` to `writer`.
    /// Appends `entry` as record `sequence` to `writer`, encoding the payload in place: this runs
    /// for every answer the guest gets, so it makes no temporary buffers.
    public static func append(_ entry: EventLogEntry, sequence: UInt64, to writer: inout ByteWriter) {
        let start = writer.bytes.count
        writer.u64(sequence)
        writer.u8(0)  // type and length, filled in below
        writer.u32(0)
        let type = encodePayload(entry, into: &writer)
        writer.overwrite(type, at: start + 8)
        writer.overwrite(UInt32(writer.bytes.count - start - 13), at: start + 9)
        let crc = writer.bytes.withUnsafeBytes { CRC32C.checksum(UnsafeRawBufferPointer(rebasing: $0[start...])) }
        writer.u32(crc)
    }

    private static func encodePayload(_ entry: EventLogEntry, into w: inout ByteWriter) -> UInt8 {
        switch entry {
        case .clock(let clock, let value):
            w.u8(clock.rawValue)
            w.u64(value)
            return 1
        case .random(let bytes):
            w.raw(bytes)
            return 2
        case .accept(let listener, let result):
            w.u32(UInt32(listener.index))
            encode(result, into: &w) { w, id in w.u64(id.value) }
            return 3
        case .receive(let connection, let result):
            w.u64(connection.value)
            encode(result, into: &w) { w, bytes in w.raw(bytes) }
            return 4
        case .send(let connection, let offered, let digest, let result):
            w.u64(connection.value)
            w.u32(offered)
            w.u32(digest)
            encode(result, into: &w) { w, count in w.u32(UInt32(count)) }
            return 5
        case .shutdown(let connection, let reading, let writing):
            w.u64(connection.value)
            w.u8((reading ? 1 : 0) | (writing ? 2 : 0))
            return 6
        case .closeConnection(let connection):
            w.u64(connection.value)
            return 7
        case .closeListener(let listener):
            w.u32(UInt32(listener.index))
            return 8
        case .poll(let interests, let outcome):
            w.u32(interests)
            switch outcome {
            case .ready(let ready):
                w.u8(0)
                w.u32(UInt32(ready.count))
                for item in ready {
                    w.u32(UInt32(item.interest))
                    w.u8((item.readable ? 1 : 0) | (item.writable ? 2 : 0) | (item.hangup ? 4 : 0))
                }
            case .timedOut: w.u8(1)
            case .interrupted: w.u8(2)
            case .failed(let errno):
                w.u8(3)
                w.u32(UInt32(bitPattern: errno))
            }
            return 9
        case .console(let stream, let length, let digest):
            w.u8(stream.rawValue)
            w.u32(length)
            w.u32(digest)
            return 10
        case .suspended(let hostCalls):
            w.u32(hostCalls)
            return 11
        }
    }

    private static func encode<Value>(
        _ result: WorldResult<Value>, into w: inout ByteWriter, _ value: (inout ByteWriter, Value) -> Void
    ) {
        switch result {
        case .done(let done):
            w.u8(0)
            value(&w, done)
        case .wouldBlock:
            w.u8(1)
        case .failed(let errno):
            w.u8(2)
            w.u32(UInt32(bitPattern: errno))
        }
    }
}
