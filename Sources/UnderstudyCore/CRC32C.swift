import CUnderstudyHost

/// CRC-32C (Castagnoli), the checksum of every checkpoint record, log entry and wire frame.
/// Computed by the C shim (the SSE4.2 instruction where the CPU has it).
public enum CRC32C {
    public static func checksum<Bytes: Sequence>(_ bytes: Bytes, continuing previous: UInt32 = 0) -> UInt32
    where Bytes.Element == UInt8 {
        if let crc = bytes.withContiguousStorageIfAvailable({ checksum(UnsafeRawBufferPointer($0), continuing: previous) }) {
            return crc
        }
        return checksum(Array(bytes), continuing: previous)
    }

    public static func checksum(_ bytes: UnsafeRawBufferPointer, continuing previous: UInt32 = 0) -> UInt32 {
        understudy_crc32c(previous, bytes.baseAddress, bytes.count)
    }
}
