/// Little-endian building blocks of the checkpoint, event-log and wire encodings.
public struct ByteWriter {
    public private(set) var bytes: [UInt8] = []

    public init() {}

    /// Hands the bytes over and starts empty again, keeping the capacity.
    public mutating func take() -> [UInt8] {
        defer { bytes.removeAll(keepingCapacity: true) }
        return bytes
    }

    public mutating func u8(_ value: UInt8) { bytes.append(value) }

    /// Replaces bytes already written at `offset`: a header field known only once what follows
    /// it has been written in place.
    public mutating func overwrite(_ value: UInt8, at offset: Int) { bytes[offset] = value }
    public mutating func overwrite(_ value: UInt32, at offset: Int) {
        withUnsafeBytes(of: value.littleEndian) { bytes.replaceSubrange(offset..<offset + 4, with: $0) }
    }
    public mutating func u16(_ value: UInt16) { withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) } }
    public mutating func u32(_ value: UInt32) { withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) } }
    public mutating func u64(_ value: UInt64) { withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) } }
    public mutating func raw<Bytes: Collection>(_ data: Bytes) where Bytes.Element == UInt8 { bytes.append(contentsOf: data) }

    public mutating func string(_ text: String) {
        let utf8 = Array(text.utf8)
        u16(UInt16(utf8.count))
        raw(utf8)
    }
}

public struct ByteReader {
    public struct Truncated: Error {}

    public let bytes: ArraySlice<UInt8>
    public private(set) var offset: Int

    public init(_ bytes: ArraySlice<UInt8>) {
        self.bytes = bytes
        offset = bytes.startIndex
    }

    public var isAtEnd: Bool { offset == bytes.endIndex }

    public mutating func raw(_ count: Int) throws(Truncated) -> ArraySlice<UInt8> {
        guard count >= 0, bytes.endIndex - offset >= count else { throw Truncated() }
        defer { offset += count }
        return bytes[offset..<offset + count]
    }

    public mutating func u8() throws(Truncated) -> UInt8 { try raw(1).first! }
    public mutating func u16() throws(Truncated) -> UInt16 { UInt16(try integer(2)) }
    public mutating func u32() throws(Truncated) -> UInt32 { UInt32(try integer(4)) }
    public mutating func u64() throws(Truncated) -> UInt64 { try integer(8) }

    public mutating func string() throws(Truncated) -> String {
        let count = Int(try u16())
        return String(decoding: try raw(count), as: UTF8.self)
    }

    private mutating func integer(_ width: Int) throws(Truncated) -> UInt64 {
        var value: UInt64 = 0
        for (shift, byte) in try raw(width).enumerated() { value |= UInt64(byte) << (8 * UInt64(shift)) }
        return value
    }
}
