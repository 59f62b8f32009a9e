import CUnderstudyHost

/// XXH64, through the C shim: what an active-mode sync compares blocks of memory by. 64 bits
/// make a chance collision between two differing blocks negligible (2⁻⁶⁴ per comparison); it is
/// no defence against a guest that crafts collisions, which a sync does not need.
public enum Hash64 {
    public static func of(_ bytes: UnsafeRawBufferPointer, seed: UInt64 = 0) -> UInt64 {
        understudy_hash64(bytes.baseAddress, bytes.count, seed)
    }

    public static func of(_ bytes: [UInt8], seed: UInt64 = 0) -> UInt64 {
        bytes.withUnsafeBytes { of($0, seed: seed) }
    }

    public static func of(_ bytes: ArraySlice<UInt8>, seed: UInt64 = 0) -> UInt64 {
        bytes.withUnsafeBytes { of($0, seed: seed) }
    }
}
