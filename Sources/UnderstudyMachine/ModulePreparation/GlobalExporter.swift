/// Exports every mutable global a module defines, so a checkpoint can read and restore the
/// complete machine state through WasmKit's public API (Wizer's trick). Globals that are already
/// exported keep their name; the others get `exportedGlobalPrefix + index`.
enum GlobalExporter {
    static let exportedGlobalPrefix = "understudy.global."

    private static let globalSection: UInt8 = 6
    private static let exportSection: UInt8 = 7
    private static let globalKind: UInt8 = 3

    static func exportMutableGlobals(_ bytes: [UInt8]) throws(WasmBinaryReader.Failure) -> [UInt8] {
        let sections = try WasmBinaryReader.sections(of: bytes)
        let importedGlobals = try WasmBinaryReader.importCounts(of: bytes, sections: sections).globals
        let mutable = try mutableGlobalIndices(bytes, sections, firstIndex: importedGlobals)
        guard let exports = sections.first(where: { $0.id == exportSection }) else {
            throw .unsupported("a module without exports (a WASI command exports _start)")
        }
        var reader = WasmBinaryReader(bytes, offset: exports.payload.lowerBound)
        let count = try reader.uleb()
        var alreadyExported = Set<UInt64>()
        for _ in 0..<count {
            _ = try reader.name()
            let kind = try reader.byte()
            let index = try reader.uleb()
            if kind == globalKind { alreadyExported.insert(index) }
        }
        let missing = mutable.filter { !alreadyExported.contains($0) }
        if missing.isEmpty { return bytes }

        var payload = WasmBinaryWriter.uleb(count + UInt64(missing.count))
        payload += bytes[(exports.payload.lowerBound + WasmBinaryWriter.uleb(count).count)..<exports.payload.upperBound]
        for index in missing {
            payload += WasmBinaryWriter.name(exportedGlobalPrefix + String(index))
            payload.append(globalKind)
            payload += WasmBinaryWriter.uleb(index)
        }
        var rewritten = Array(bytes[0..<exports.range.lowerBound])
        rewritten += WasmBinaryWriter.section(id: exportSection, payload: payload)
        rewritten += bytes[exports.range.upperBound...]
        return rewritten
    }

    private static func mutableGlobalIndices(
        _ bytes: [UInt8], _ sections: [WasmBinaryReader.Section], firstIndex: UInt64
    ) throws(WasmBinaryReader.Failure) -> [UInt64] {
        guard let globals = sections.first(where: { $0.id == globalSection }) else { return [] }
        var reader = WasmBinaryReader(bytes, offset: globals.payload.lowerBound)
        var mutable: [UInt64] = []
        let count = try reader.uleb()
        for offset in 0..<count {
            _ = try reader.byte()  // value type
            if try reader.byte() == 1 { mutable.append(firstIndex + offset) }
            try reader.skipConstantExpression()
        }
        return mutable
    }
}
