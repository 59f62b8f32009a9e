/// Bounds-checked access to the guest's linear memory for host calls. A guest pointer is input:
/// a bad one is the guest's bug and gets EFAULT, never a host crash.
struct GuestMemoryView {
    let instance: any GuestInstance

    func checked(_ address: UInt32, _ count: UInt32) throws(WASIErrno) -> UInt {
        let end = UInt64(address) + UInt64(count)
        guard end <= UInt64(instance.memoryByteCount) else { throw .fault }
        return UInt(address)
    }

    func withBytes<T>(
        at address: UInt32, count: UInt32, _ body: (UnsafeMutableRawBufferPointer) throws(WASIErrno) -> T
    ) throws(WASIErrno) -> T {
        // One look at the memory for both the bounds and the bytes: with wasmtime each is a call
        // into the library, and host calls make several such accesses each.
        let result: Result<T, WASIErrno> = instance.withMemory { memory in
            let end = UInt64(address) + UInt64(count)
            guard end <= UInt64(memory.count) else { return .failure(.fault) }
            let buffer = UnsafeMutableRawBufferPointer(rebasing: memory[Int(address)..<Int(end)])
            do throws(WASIErrno) { return .success(try body(buffer)) } catch { return .failure(error) }
        }
        return try result.get()
    }

    func load<T: FixedWidthInteger>(_: T.Type, at address: UInt32) throws(WASIErrno) -> T {
        try withBytes(at: address, count: UInt32(MemoryLayout<T>.size)) { bytes in
            T(littleEndian: bytes.loadUnaligned(as: T.self))
        }
    }

    func store<T: FixedWidthInteger>(_ value: T, at address: UInt32) throws(WASIErrno) {
        try withBytes(at: address, count: UInt32(MemoryLayout<T>.size)) { bytes in
            bytes.storeBytes(of: value.littleEndian, as: T.self)
        }
    }

    func bytes(at address: UInt32, count: UInt32) throws(WASIErrno) -> [UInt8] {
        try withBytes(at: address, count: count) { Array($0) }
    }

    func store(bytes: [UInt8], at address: UInt32) throws(WASIErrno) {
        try withBytes(at: address, count: UInt32(bytes.count)) { buffer in
            buffer.copyBytes(from: bytes)
        }
    }

    /// A WASI `iovec`/`ciovec` array: (pointer, length) pairs of 8 bytes each.
    func ioVectors(at address: UInt32, count: UInt32) throws(WASIErrno) -> [(base: UInt32, length: UInt32)] {
        guard count <= 1024 else { throw .inval }
        _ = try checked(address, count * 8)
        var vectors: [(base: UInt32, length: UInt32)] = []
        vectors.reserveCapacity(Int(count))
        for index in 0..<count {
            let entry = address + index * 8
            let base = try load(UInt32.self, at: entry)
            let length = try load(UInt32.self, at: entry &+ 4)
            _ = try checked(base, length)
            vectors.append((base, length))
        }
        return vectors
    }
}
