/// Just enough of the WebAssembly binary format to find and rewrite sections. The full
/// validation is WasmKit's; this reader only has to be exact about the few structures it walks.
struct WasmBinaryReader {
    enum Failure: Error, CustomStringConvertible {
        case truncated(at: Int)
        case badHeader
        case unsupported(String)

        var description: String {
            switch self {
            case .truncated(let offset): return "the module ends early (at byte \(offset))"
            case .badHeader: return "not a WebAssembly binary (bad magic or version)"
            case .unsupported(let what): return "unsupported construct: \(what)"
            }
        }
    }

    struct Section {
        let id: UInt8
        /// The whole section, id and size included, so unchanged sections are copied verbatim.
        let range: Range<Int>
        let payload: Range<Int>
    }

    let bytes: [UInt8]
    var offset: Int

    init(_ bytes: [UInt8], offset: Int = 0) {
        self.bytes = bytes
        self.offset = offset
    }

    static let header: [UInt8] = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00]

    static func sections(of bytes: [UInt8]) throws(Failure) -> [Section] {
        guard bytes.count >= 8, Array(bytes[0..<8]) == header else { throw .badHeader }
        var reader = WasmBinaryReader(bytes, offset: 8)
        var sections: [Section] = []
        while reader.offset < bytes.count {
            let start = reader.offset
            let id = try reader.byte()
            let size = Int(try reader.uleb())
            let payloadStart = reader.offset
            guard payloadStart + size <= bytes.count else { throw .truncated(at: bytes.count) }
            reader.offset = payloadStart + size
            sections.append(Section(id: id, range: start..<reader.offset, payload: payloadStart..<reader.offset))
        }
        return sections
    }

    /// The names of the custom sections (id 0) of `bytes`, in order.
    static func customSectionNames(of bytes: [UInt8]) throws(Failure) -> [String] {
        try sections(of: bytes).filter { $0.id == 0 }.map { section throws(Failure) in
            var reader = WasmBinaryReader(bytes, offset: section.payload.lowerBound)
            return String(decoding: try reader.name(), as: UTF8.self)
        }
    }

    /// The initial size of the module's own first memory, or nil when it defines none.
    static func initialMemoryBytes(of bytes: [UInt8]) throws(Failure) -> UInt64? {
        guard let section = try sections(of: bytes).first(where: { $0.id == 5 }) else { return nil }
        var reader = WasmBinaryReader(bytes, offset: section.payload.lowerBound)
        guard try reader.uleb() > 0 else { return nil }
        _ = try reader.byte()  // flags: whether a maximum follows, shared, 64-bit
        return try reader.uleb() * 65_536
    }

    mutating func byte() throws(Failure) -> UInt8 {
        guard offset < bytes.count else { throw .truncated(at: offset) }
        defer { offset += 1 }
        return bytes[offset]
    }

    mutating func uleb() throws(Failure) -> UInt64 {
        var result: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            let next = try byte()
            guard shift < 64 else { throw .unsupported("LEB128 longer than 64 bits") }
            result |= UInt64(next & 0x7f) << shift
            if next & 0x80 == 0 { return result }
            shift += 7
        }
    }

    /// Signed LEB128: only its length matters here, the value is never interpreted.
    mutating func skipLEB() throws(Failure) {
        while try byte() & 0x80 != 0 {}
    }

    mutating func skip(_ count: Int) throws(Failure) {
        guard offset + count <= bytes.count else { throw .truncated(at: bytes.count) }
        offset += count
    }

    mutating func name() throws(Failure) -> [UInt8] {
        let length = Int(try uleb())
        guard offset + length <= bytes.count else { throw .truncated(at: bytes.count) }
        defer { offset += length }
        return Array(bytes[offset..<offset + length])
    }

    mutating func skipLimits() throws(Failure) {
        let flags = try byte()
        _ = try uleb()
        if flags & 0x01 != 0 { _ = try uleb() }
    }

    /// A constant expression, as found in global initialisers.
    mutating func skipConstantExpression() throws(Failure) {
        while try byte() != 0x0b {
            offset -= 1
            try skipConstantInstruction()
        }
    }

    /// One instruction of a constant expression, its `end` included.
    mutating func skipConstantInstruction() throws(Failure) {
        let opcode = try byte()
        switch opcode {
        case 0x0b: return
        case 0x41, 0x42: try skipLEB()  // i32.const, i64.const
        case 0x43: try skip(4)  // f32.const
        case 0x44: try skip(8)  // f64.const
        case 0x23, 0xd2: _ = try uleb()  // global.get, ref.func
        case 0xd0: _ = try byte()  // ref.null heaptype
        case 0x6a, 0x6b, 0x6c, 0x7c, 0x7d, 0x7e: return  // extended-const arithmetic
        case 0xfd:  // v128.const
            guard try uleb() == 12 else { throw .unsupported("SIMD opcode in a constant expression") }
            try skip(16)
        default: throw .unsupported("opcode 0x\(String(opcode, radix: 16)) in a constant expression")
        }
    }

    /// How many functions and globals the module imports (their indices come before its own).
    static func importCounts(of bytes: [UInt8], sections: [Section]) throws(Failure) -> (functions: UInt64, globals: UInt64) {
        guard let imports = sections.first(where: { $0.id == 2 }) else { return (0, 0) }
        var reader = WasmBinaryReader(bytes, offset: imports.payload.lowerBound)
        var counts: (functions: UInt64, globals: UInt64) = (0, 0)
        for _ in 0..<(try reader.uleb()) {
            _ = try reader.name()
            _ = try reader.name()
            switch try reader.byte() {
            case 0:  // function: type index
                _ = try reader.uleb()
                counts.functions += 1
            case 1:  // table: reftype, limits
                _ = try reader.byte()
                try reader.skipLimits()
            case 2: try reader.skipLimits()  // memory
            case 3:  // global: valtype, mutability
                _ = try reader.byte()
                _ = try reader.byte()
                counts.globals += 1
            case 4:  // tag: attribute, type index
                _ = try reader.byte()
                _ = try reader.uleb()
            case let kind: throw .unsupported("import kind \(kind)")
            }
        }
        return counts
    }
}

enum WasmBinaryWriter {
    static func uleb(_ value: UInt64) -> [UInt8] {
        var value = value
        var out: [UInt8] = []
        repeat {
            var byte = UInt8(value & 0x7f)
            value >>= 7
            if value != 0 { byte |= 0x80 }
            out.append(byte)
        } while value != 0
        return out
    }

    static func sleb(_ value: Int64) -> [UInt8] {
        var value = value
        var out: [UInt8] = []
        while true {
            let byte = UInt8(value & 0x7f)
            value >>= 7
            if (value == 0 && byte & 0x40 == 0) || (value == -1 && byte & 0x40 != 0) { return out + [byte] }
            out.append(byte | 0x80)
        }
    }

    static func name(_ text: String) -> [UInt8] { name(Array(text.utf8)) }

    static func name(_ utf8: [UInt8]) -> [UInt8] { uleb(UInt64(utf8.count)) + utf8 }

    static func section(id: UInt8, payload: [UInt8]) -> [UInt8] {
        [id] + uleb(UInt64(payload.count)) + payload
    }
}
