#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

public enum FileDescriptorWriting {
    /// Writes all of `bytes` to `fd`, retrying short writes and EINTR. Returns the errno of a
    /// failure, nil on success: the callers name the file in their own error.
    public static func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Int32? {
        var written = 0
        while written < bytes.count {
            let result = write(fd, bytes.baseAddress! + written, bytes.count - written)
            if result < 0 && errno == EINTR { continue }
            if result < 0 { return errno }
            if result == 0 { return EIO }
            written += result
        }
        return nil
    }
}
