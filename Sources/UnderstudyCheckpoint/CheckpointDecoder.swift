import UnderstudyCore
import UnderstudyMachine

/// Interprets checksummed records into a `Checkpoint`, checking every count and index against
/// the header so a well-checksummed but inconsistent file is refused too.
struct CheckpointDecoder {
    private var header: (kind: Checkpoint.Kind, moduleHash: String, logPosition: UInt64, memoryBytes: UInt64, unwind: UInt32)?
    private var pages: [Checkpoint.Page] = []
    private var zeroPages: [UInt32] = []
    private var globals: [MachineState.GlobalState]?
    private var descriptors: DescriptorTable?
    private var unwoundStack: [UInt8]?
    /// Larger than any unwind buffer a machine is configured with.
    static let unwoundStackMax = 1 << 20

    mutating func add(_ type: CheckpointCodec.RecordType, _ payload: ArraySlice<UInt8>) throws(CheckpointError) {
        var reader = ByteReader(payload)
        do {
            switch type {
            case .header:
                guard header == nil else { throw CheckpointError.malformed("two header records") }
                let version = try reader.u16()
                guard version == CheckpointCodec.formatVersion else { throw CheckpointError.unsupportedVersion(version) }
                guard let kind = Checkpoint.Kind(rawValue: try reader.u8()) else { throw CheckpointError.malformed("unknown kind") }
                header = (kind, try reader.string(), try reader.u64(), try reader.u64(), try reader.u32())
                guard header!.memoryBytes % UInt64(Checkpoint.pageSize) == 0, header!.memoryBytes <= 1 << 32 else {
                    throw CheckpointError.malformed("memory size \(header!.memoryBytes) is not whole pages within 4 GiB")
                }
            case .pages:
                let memoryPages = try requireHeader().memoryBytes / UInt64(Checkpoint.pageSize)
                let first = try reader.u32()
                let count = try reader.u32()
                guard UInt64(first) + UInt64(count) <= memoryPages else {
                    throw CheckpointError.malformed("pages \(first)+\(count) lie outside the memory")
                }
                guard pages.last.map({ $0.index < first }) ?? true else { throw CheckpointError.malformed("page runs out of order") }
                for offset in 0..<count {
                    pages.append(Checkpoint.Page(index: first + offset, bytes: try reader.raw(Checkpoint.pageSize)))
                }
            case .zeroPages:
                let memoryPages = try requireHeader().memoryBytes / UInt64(Checkpoint.pageSize)
                for _ in 0..<(try reader.u32()) {
                    let index = try reader.u32()
                    guard UInt64(index) < memoryPages else { throw CheckpointError.malformed("zero page \(index) outside the memory") }
                    zeroPages.append(index)
                }
            case .globals:
                var decoded: [MachineState.GlobalState] = []
                for _ in 0..<(try reader.u32()) {
                    let name = try reader.string()
                    guard let kind = MachineState.GlobalState.Kind(rawValue: try reader.u8()) else {
                        throw CheckpointError.malformed("global \(name) has an unknown type")
                    }
                    decoded.append(MachineState.GlobalState(name: name, kind: kind, bits: try reader.u64()))
                }
                globals = decoded
            case .descriptors:
                var entries: [DescriptorTable.Entry?] = []
                let count = try reader.u32()
                guard count <= DescriptorTable.descriptorsMax else { throw CheckpointError.malformed("\(count) descriptors") }
                for _ in 0..<count { entries.append(try DescriptorCoding.read(from: &reader)) }
                descriptors = DescriptorTable(entries: entries)
            case .unwoundStack:
                guard unwoundStack == nil else { throw CheckpointError.malformed("two unwound-stack records") }
                guard payload.count >= 8, payload.count <= Self.unwoundStackMax else {
                    throw CheckpointError.malformed("an unwound stack of \(payload.count) bytes")
                }
                unwoundStack = Array(try reader.raw(payload.count))
            case .end:
                preconditionFailure("the end record is handled by the codec")
            }
        } catch let error as CheckpointError {
            throw error
        } catch {
            throw .malformed("a \(type) record is shorter than its contents")
        }
        guard reader.isAtEnd else { throw .malformed("a \(type) record has trailing bytes") }
    }

    mutating func finish(_ payload: ArraySlice<UInt8>, recordsBefore: Int) throws(CheckpointError) {
        var reader = ByteReader(payload)
        guard let counted = try? reader.u32(), reader.isAtEnd, Int(counted) == recordsBefore else {
            throw .malformed("the end record does not match the records before it")
        }
    }

    func checkpoint() throws(CheckpointError) -> Checkpoint {
        let header = try requireHeader()
        guard let globals, let descriptors else { throw .malformed("globals or descriptors missing") }
        return Checkpoint(
            kind: header.kind, moduleHash: header.moduleHash, logPosition: header.logPosition,
            memoryBytes: header.memoryBytes, pages: pages, zeroPages: zeroPages, globals: globals,
            descriptors: descriptors, unwindDataAddress: header.unwind, unwoundStack: unwoundStack ?? [])
    }

    private func requireHeader() throws(CheckpointError) -> (kind: Checkpoint.Kind, moduleHash: String, logPosition: UInt64, memoryBytes: UInt64, unwind: UInt32) {
        guard let header else { throw .malformed("the header record is not first") }
        return header
    }
}

/// One descriptor-table slot: kind u8 (0 free, 1 stdin, 2 console, 3 listener, 4 connection),
/// its argument u64, non-blocking u8.
enum DescriptorCoding {
    static func write(_ entry: DescriptorTable.Entry?, to w: inout ByteWriter) {
        guard let entry else {
            w.u8(0)
            w.u64(0)
            w.u8(0)
            return
        }
        let (tag, argument): (UInt8, UInt64)
        switch entry.kind {
        case .stdin: (tag, argument) = (1, 0)
        case .console(let stream): (tag, argument) = (2, UInt64(stream.rawValue))
        case .listener(let id): (tag, argument) = (3, UInt64(id.index))
        case .connection(let id): (tag, argument) = (4, id.value)
        }
        w.u8(tag)
        w.u64(argument)
        w.u8(entry.nonblocking ? 1 : 0)
    }

    static func read(from r: inout ByteReader) throws -> DescriptorTable.Entry? {
        let tag = try r.u8()
        let argument = try r.u64()
        let nonblocking = try r.u8() == 1
        let kind: DescriptorTable.Kind
        switch tag {
        case 0: return nil
        case 1: kind = .stdin
        case 2:
            guard let stream = ConsoleStream(rawValue: UInt8(truncatingIfNeeded: argument)) else {
                throw CheckpointError.malformed("console descriptor for stream \(argument)")
            }
            kind = .console(stream)
        case 3: kind = .listener(ListenerID(Int(truncatingIfNeeded: argument)))
        case 4: kind = .connection(ConnectionID(argument))
        default: throw CheckpointError.malformed("descriptor kind \(tag)")
        }
        return DescriptorTable.Entry(kind: kind, nonblocking: nonblocking)
    }
}
