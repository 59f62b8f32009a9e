import WasmParser

/// Deterministic suspension points, for guests that compute without calling the host. A machine
/// suspends only inside host calls (Asyncify unwinds from an import), so a guest busy in a loop
/// could not be checkpointed until its next call, and held every checkpoint of a busy server
/// back. Preparation therefore counts down a budget at every loop header and,
/// each time it runs out, calls an import of ours, `understudy.suspension_point`, where the
/// machine suspends if a suspension is due (like `sched_yield`). The count is a global of the
/// guest's, exported as `budgetExport`: it is part of the machine's state, so a restored or
/// replayed machine (on either engine) reaches the same calls at the same instructions.
///
/// The rewrite inserts one function import, so every defined function's index moves up by one:
/// calls, `ref.func`, exports, the start function, element segments and the name section are
/// renumbered. Everything else is copied as it is.
///
/// Function entries are not counted: a check there cost kv 30% of its `GET -P 16` throughput on
/// wasmtime (every leaf function became one Asyncify instruments), loops alone about 7%. A guest
/// that computes by recursion without loops is therefore not suspended until it loops or calls
/// the host.
enum SuspensionPoints {
    static let importModule = "understudy"
    static let importName = "suspension_point"
    /// `module.name`, as Asyncify's import list names it.
    static var qualifiedName: String { "\(importModule).\(importName)" }
    static let budgetExport = "understudy.suspension_budget"
    /// Loop iterations between two suspension points: about 0.1–1 ms of a
    /// compiled guest's time, a few ms of an interpreted one's; a host call each time costs
    /// nothing next to that.
    static let budget: Int32 = 100_000

    private enum SectionID: UInt8 {
        case custom = 0, type, `import`, function, table, memory, global, export, start, element, code, data, dataCount, tag

        /// Where it goes in a module: by id, except that tags precede globals and the data count precedes code.
        var position: Int {
            switch self {
            case .tag: return Int(SectionID.global.rawValue) * 2 - 1
            case .dataCount: return Int(SectionID.code.rawValue) * 2 - 1
            default: return Int(rawValue) * 2
            }
        }
    }

    static func insert(into bytes: [UInt8]) throws(WasmBinaryReader.Failure) -> [UInt8] {
        let sections = try WasmBinaryReader.sections(of: bytes)
        func section(_ id: SectionID) -> WasmBinaryReader.Section? { sections.first { $0.id == id.rawValue } }
        let typeCount = try section(.type).map { s throws(WasmBinaryReader.Failure) in try functionTypeCount(bytes, s) } ?? 0
        let imported = try WasmBinaryReader.importCounts(of: bytes, sections: sections)
        let definedGlobals = try section(.global).map { s throws(WasmBinaryReader.Failure) in try vectorCount(bytes, s) } ?? 0
        let rewrite = Renumbering(bytes: bytes, importedFunctions: imported.functions, budgetGlobal: imported.globals + definedGlobals)

        var out = Array(bytes[0..<8])
        var emitted = Set<SectionID>()
        /// Adds the sections this rewrite needs and the module lacks, where the binary's order of
        /// sections wants them: before the first section that comes after them.
        func emitMissing(before next: SectionID) {
            let missing: [(SectionID, [UInt8])] = [
                (.type, [0x01] + SuspensionPoints.functionType),
                (.import, [0x01] + rewrite.importEntry(typeIndex: typeCount)),
                (.global, [0x01] + rewrite.budgetEntry),
            ]
            for (id, payload) in missing where id.position < next.position && !emitted.contains(id) {
                out += WasmBinaryWriter.section(id: id.rawValue, payload: payload)
                emitted.insert(id)
            }
        }
        for current in sections {
            guard let id = SectionID(rawValue: current.id) else { throw .unsupported("section id \(current.id)") }
            if id != .custom { emitMissing(before: id) }
            var reader = WasmBinaryReader(bytes, offset: current.payload.lowerBound)
            switch id {
            case .type:
                let count = try reader.uleb()
                out += WasmBinaryWriter.section(
                    id: current.id, payload: WasmBinaryWriter.uleb(count + 1) + bytes[reader.offset..<current.payload.upperBound] + functionType)
            case .import:
                let count = try reader.uleb()
                out += WasmBinaryWriter.section(
                    id: current.id,
                    payload: WasmBinaryWriter.uleb(count + 1) + bytes[reader.offset..<current.payload.upperBound]
                        + rewrite.importEntry(typeIndex: typeCount))
            case .global: out += WasmBinaryWriter.section(id: current.id, payload: try rewrite.globals(current))
            case .export: out += WasmBinaryWriter.section(id: current.id, payload: try rewrite.exports(current))
            case .start: out += WasmBinaryWriter.section(id: current.id, payload: WasmBinaryWriter.uleb(rewrite.moved(try reader.uleb())))
            case .element: out += WasmBinaryWriter.section(id: current.id, payload: try rewrite.elements(current))
            case .code: out += WasmBinaryWriter.section(id: current.id, payload: try rewrite.code(current))
            case .custom:
                let name = String(decoding: try reader.name(), as: UTF8.self)
                if name == "name" {
                    out += WasmBinaryWriter.section(id: current.id, payload: try rewrite.names(current))
                } else {
                    out += bytes[current.range]
                }
            case .function, .table, .memory, .data, .dataCount, .tag: out += bytes[current.range]
            }
            emitted.insert(id)
        }
        guard emitted.contains(.export) else { throw .unsupported("a module without exports (a WASI command exports _start)") }
        return out
    }

    /// `() -> ()`, the suspension point's type.
    fileprivate static let functionType: [UInt8] = [0x60, 0x00, 0x00]

    /// The number of types, each of which must be a plain function type (no GC recursion groups,
    /// whose indices this rewrite would have to count differently).
    private static func functionTypeCount(_ bytes: [UInt8], _ section: WasmBinaryReader.Section) throws(WasmBinaryReader.Failure) -> UInt64 {
        var reader = WasmBinaryReader(bytes, offset: section.payload.lowerBound)
        let count = try reader.uleb()
        for _ in 0..<count {
            guard try reader.byte() == 0x60 else { throw .unsupported("a type that is not a function type") }
            for _ in 0..<2 {
                for _ in 0..<(try reader.uleb()) {
                    let type = try reader.byte()
                    guard [0x7f, 0x7e, 0x7d, 0x7c, 0x7b, 0x70, 0x6f].contains(type) else { throw .unsupported("value type 0x\(String(type, radix: 16))") }
                }
            }
        }
        return count
    }

    private static func vectorCount(_ bytes: [UInt8], _ section: WasmBinaryReader.Section) throws(WasmBinaryReader.Failure) -> UInt64 {
        var reader = WasmBinaryReader(bytes, offset: section.payload.lowerBound)
        return try reader.uleb()
    }
}

/// The rewrite's indices, and the sections it renumbers.
private struct Renumbering {
    let bytes: [UInt8]
    /// The new import's function index: the first defined function's old one. Defined functions
    /// start there, and each moves up by one.
    let suspensionPoint: UInt64
    let budgetGlobal: UInt64
    /// Inserted at every loop header: when the budget is spent, refill it and call the suspension
    /// point; then spend one. The refill comes first so that a suspension there, unwound and
    /// rewound, resumes with it done.
    let check: [UInt8]

    init(bytes: [UInt8], importedFunctions: UInt64, budgetGlobal: UInt64) {
        self.bytes = bytes
        suspensionPoint = importedFunctions
        self.budgetGlobal = budgetGlobal
        let get = [0x23] + WasmBinaryWriter.uleb(budgetGlobal)
        let set = [0x24] + WasmBinaryWriter.uleb(budgetGlobal)
        var check: [UInt8] = get + [0x45, 0x04, 0x40]  // global.get; i32.eqz; if (no result)
        check += [0x41] + WasmBinaryWriter.sleb(Int64(SuspensionPoints.budget)) + set
        check += [0x10] + WasmBinaryWriter.uleb(suspensionPoint) + [0x0b]  // call; end
        check += get + [0x41, 0x01, 0x6b] + set  // global.get; i32.const 1; i32.sub; global.set
        self.check = check
    }

    func moved(_ function: UInt64) -> UInt64 { function >= suspensionPoint ? function + 1 : function }

    func importEntry(typeIndex: UInt64) -> [UInt8] {
        WasmBinaryWriter.name(SuspensionPoints.importModule) + WasmBinaryWriter.name(SuspensionPoints.importName) + [0x00]
            + WasmBinaryWriter.uleb(typeIndex)
    }

    /// `(global (mut i32) (i32.const budget))`.
    var budgetEntry: [UInt8] { [0x7f, 0x01, 0x41] + WasmBinaryWriter.sleb(Int64(SuspensionPoints.budget)) + [0x0b] }

    func globals(_ section: WasmBinaryReader.Section) throws(WasmBinaryReader.Failure) -> [UInt8] {
        var reader = WasmBinaryReader(bytes, offset: section.payload.lowerBound)
        let count = try reader.uleb()
        var payload = WasmBinaryWriter.uleb(count + 1)
        for _ in 0..<count {
            payload += [try reader.byte(), try reader.byte()]  // value type, mutability
            payload += try constantExpression(&reader)
        }
        return payload + budgetEntry
    }

    func exports(_ section: WasmBinaryReader.Section) throws(WasmBinaryReader.Failure) -> [UInt8] {
        var reader = WasmBinaryReader(bytes, offset: section.payload.lowerBound)
        let count = try reader.uleb()
        var payload = WasmBinaryWriter.uleb(count + 1)
        for _ in 0..<count {
            payload += WasmBinaryWriter.name(try reader.name())
            let kind = try reader.byte()
            let index = try reader.uleb()
            payload += [kind] + WasmBinaryWriter.uleb(kind == 0 ? moved(index) : index)
        }
        return payload + WasmBinaryWriter.name(SuspensionPoints.budgetExport) + [0x03] + WasmBinaryWriter.uleb(budgetGlobal)
    }

    func elements(_ section: WasmBinaryReader.Section) throws(WasmBinaryReader.Failure) -> [UInt8] {
        var reader = WasmBinaryReader(bytes, offset: section.payload.lowerBound)
        let count = try reader.uleb()
        var payload = WasmBinaryWriter.uleb(count)
        for _ in 0..<count {
            let flags = try reader.uleb()
            guard flags <= 7 else { throw .unsupported("element segment flags \(flags)") }
            payload += WasmBinaryWriter.uleb(flags)
            if flags & 0b010 != 0, flags & 0b001 == 0 { payload += WasmBinaryWriter.uleb(try reader.uleb()) }  // table index
            if flags & 0b001 == 0 { payload += try constantExpression(&reader) }  // active: offset
            if flags & 0b011 != 0 { payload.append(try reader.byte()) }  // element kind, or reference type
            let items = try reader.uleb()
            payload += WasmBinaryWriter.uleb(items)
            for _ in 0..<items {
                payload += flags & 0b100 == 0 ? WasmBinaryWriter.uleb(moved(try reader.uleb())) : try constantExpression(&reader)
            }
        }
        return payload
    }

    /// The name section with its function names and local names renumbered; the other
    /// subsections do not name functions and are copied.
    func names(_ section: WasmBinaryReader.Section) throws(WasmBinaryReader.Failure) -> [UInt8] {
        var reader = WasmBinaryReader(bytes, offset: section.payload.lowerBound)
        var payload = WasmBinaryWriter.name(try reader.name())
        while reader.offset < section.payload.upperBound {
            let id = try reader.byte()
            let size = Int(try reader.uleb())
            let end = reader.offset + size
            guard end <= section.payload.upperBound else { throw .truncated(at: section.payload.upperBound) }
            var content: [UInt8]
            switch id {
            case 1, 2:  // function names: (index, name)*; local names: (index, (local, name)*)*
                let count = try reader.uleb()
                content = WasmBinaryWriter.uleb(count)
                for _ in 0..<count {
                    content += WasmBinaryWriter.uleb(moved(try reader.uleb()))
                    let start = reader.offset
                    if id == 1 {
                        _ = try reader.name()
                    } else {
                        for _ in 0..<(try reader.uleb()) {
                            _ = try reader.uleb()
                            _ = try reader.name()
                        }
                    }
                    content += bytes[start..<reader.offset]
                }
                guard reader.offset == end else { throw .unsupported("a name subsection longer than its entries") }
            default:
                content = Array(bytes[reader.offset..<end])
            }
            payload += [id] + WasmBinaryWriter.uleb(UInt64(content.count)) + content
            reader.offset = end
        }
        return payload
    }

    /// A constant expression, copied with its `ref.func` renumbered.
    private func constantExpression(_ reader: inout WasmBinaryReader) throws(WasmBinaryReader.Failure) -> [UInt8] {
        var out: [UInt8] = []
        while true {
            let start = reader.offset
            let opcode = try reader.byte()
            if opcode == 0xd2 {
                out += [0xd2] + WasmBinaryWriter.uleb(moved(try reader.uleb()))
                continue
            }
            reader.offset = start
            try reader.skipConstantInstruction()
            out += bytes[start..<reader.offset]
            if opcode == 0x0b { return out }
        }
    }

    /// Every body with the check after each `loop`, and its calls renumbered.
    func code(_ section: WasmBinaryReader.Section) throws(WasmBinaryReader.Failure) -> [UInt8] {
        var parser = Parser(bytes: bytes)
        var codes: [Code] = []
        do {
            while let payload = try parser.parseNext() {
                if case .codeSection(let found) = payload {
                    codes = found
                    break
                }
            }
        } catch {
            throw .unsupported("\(error)")
        }
        var reader = WasmBinaryReader(bytes, offset: section.payload.lowerBound)
        let count = try reader.uleb()
        guard count == codes.count else { throw .unsupported("the code section holds \(codes.count) bodies, not \(count)") }
        var payload = WasmBinaryWriter.uleb(count)
        for code in codes {
            let size = Int(try reader.uleb())
            let bodyStart = reader.offset
            let bodyEnd = bodyStart + size
            let expressionStart = code.expression.startIndex
            guard expressionStart >= bodyStart, code.expression.endIndex == bodyEnd else { throw .unsupported("a function body the parser placed elsewhere") }
            var body = Array(bytes[bodyStart..<expressionStart])
            body += try expression(code, from: expressionStart, to: bodyEnd)
            payload += WasmBinaryWriter.uleb(UInt64(body.count)) + body
            reader.offset = bodyEnd
        }
        return payload
    }

    private func expression(_ code: Code, from start: Int, to end: Int) throws(WasmBinaryReader.Failure) -> [UInt8] {
        var finder = EditFinder()
        var parser = ExpressionParser(code: code)
        do {
            while let visit = try parser.parse() { try visit(visitor: &finder) }
        } catch {
            throw .unsupported("\(error)")
        }
        var out: [UInt8] = []
        var cursor = start
        for edit in finder.edits {
            guard edit.offset >= cursor, edit.offset < end else { throw .unsupported("an instruction offset outside its body") }
            out += bytes[cursor..<edit.offset]
            var reader = WasmBinaryReader(bytes, offset: edit.offset + 1)
            switch edit.kind {
            case .loop(let next):
                out += bytes[edit.offset..<next] + check
                cursor = next
            case .function(let opcode):
                // Read here rather than from the parser: the index may be a padded LEB.
                out += [opcode] + WasmBinaryWriter.uleb(moved(try reader.uleb()))
                cursor = reader.offset
            }
        }
        return out + bytes[cursor..<end]
    }
}

/// Where the rewrite touches a body: each `loop` (and where its block type ends) and each
/// instruction naming a function.
private struct EditFinder: AnyInstructionVisitor {
    enum Kind {
        case loop(next: Int)
        case function(opcode: UInt8)
    }
    typealias VisitorError = WasmParserError
    var binaryOffset = 0
    var edits: [(offset: Int, kind: Kind)] = []
    private var openLoop: Int?

    mutating func visit(_ instruction: Instruction) throws(WasmParserError) {
        if let index = openLoop {
            edits[index].kind = .loop(next: binaryOffset)
            openLoop = nil
        }
        switch instruction {
        case .loop:
            openLoop = edits.count
            edits.append((binaryOffset, .loop(next: binaryOffset)))
        case .call: edits.append((binaryOffset, .function(opcode: 0x10)))
        case .returnCall: edits.append((binaryOffset, .function(opcode: 0x12)))
        case .refFunc: edits.append((binaryOffset, .function(opcode: 0xd2)))
        default: break
        }
    }
}
