import Foundation
#if canImport(Glibc)
import Glibc
#endif
import UnderstudyCore
import WasmKit

/// A guest module made ready to run as a machine: with suspension points in its loops
/// (`SuspensionPoints`), Asyncify-instrumented over them and the host calls that can suspend, and
/// with every mutable global exported.
public struct PreparedModule: @unchecked Sendable {
    /// SHA-256 of the prepared bytes: what the backup checks in the handshake.
    public let hash: String
    public let bytes: [UInt8]
    /// WasmKit's `Module` is a value over immutable data; it is only ever read.
    public let module: Module
}

public enum ModulePreparationError: Error, CustomStringConvertible, Equatable {
    case unreadable(path: String, reason: String)
    case invalid(reason: String)
    case unsupportedImport(module: String, name: String)
    case missingExport(String)
    case asyncifyUnavailable(String)
    case asyncifyFailed(String)
    case hashMismatch(expected: String, found: String)
    case notPrepared(String)

    public var description: String {
        switch self {
        case .unreadable(let path, let reason): return "cannot read module \(path): \(reason)"
        case .invalid(let reason): return "not a valid WebAssembly module: \(reason)"
        case .unsupportedImport(let module, let name):
            return "the guest imports \(module).\(name), which understudy does not offer"
        case .missingExport(let name): return "the guest does not export \(name) (is it a WASI command module?)"
        case .asyncifyUnavailable(let reason): return "cannot prepare the module: \(reason)"
        case .asyncifyFailed(let reason): return "Asyncify (wasm-opt) failed: \(reason)"
        case .hashMismatch(let expected, let found): return "the module's SHA-256 is \(found), not the \(expected) expected"
        case .notPrepared(let reason): return "the module is not a prepared module: \(reason)"
        }
    }
}

public struct ModulePreparer {
    /// Bumped whenever preparation changes what it produces, so stale cache entries are ignored.
    static let preparationVersion = "understudy-prepare-3"
    /// The proposals a module may use without saying so: WebAssembly 2.0's, which WasmKit runs
    /// (as does wasmtime). Not SIMD, threads or memory64, which WasmKit does not take by default.
    static let engineFeatures = ["bulk-memory", "sign-ext", "nontrapping-float-to-int", "mutable-globals", "multivalue", "reference-types"]

    public var cacheDirectory: URL
    public var wasmOptPath: String?

    public init(cacheDirectory: URL? = nil, wasmOptPath: String? = nil) {
        self.cacheDirectory = cacheDirectory ?? Self.defaultCacheDirectory
        self.wasmOptPath = wasmOptPath ?? ProcessInfo.processInfo.environment["UNDERSTUDY_WASM_OPT"] ?? Self.findOnPath("wasm-opt")
    }

    /// `UNDERSTUDY_CACHE`, else `~/.cache/understudy`: prepared modules, and wasmtime's compiled ones.
    public static var defaultCacheDirectory: URL {
        ProcessInfo.processInfo.environment["UNDERSTUDY_CACHE"].map { URL(fileURLWithPath: $0) }
            ?? FileManager.default.homeDirectoryForCurrentUser.appendingPathComponent(".cache/understudy")
    }

    public func prepare(path: String) throws(ModulePreparationError) -> PreparedModule {
        let original: [UInt8]
        do {
            original = Array(try Data(contentsOf: URL(fileURLWithPath: path)))
        } catch {
            throw .unreadable(path: path, reason: (error as NSError).localizedDescription)
        }
        return try prepare(bytes: original)
    }

    public func prepare(bytes original: [UInt8]) throws(ModulePreparationError) -> PreparedModule {
        let parsed = try Self.parse(original)
        try Self.checkInterface(parsed)
        let blocking = parsed.imports.map(\.name).filter { WASIImportTable.suspendable.contains($0) }

        // The instrumented set is part of the key: a module prepared for other suspension points
        // would run on in the unwinding state.
        let key = SHA256.hex(of: Array((Self.preparationVersion + blocking.sorted().joined(separator: ",")).utf8) + original)
        let cached = cacheDirectory.appendingPathComponent("\(key).wasm")
        if let hit = cachedModule(at: cached) { return hit }

        let counted: [UInt8]
        do {
            counted = try SuspensionPoints.insert(into: original)
        } catch {
            throw .invalid(reason: error.description)
        }
        let asyncified = try asyncify(counted, imports: blocking.map { "\(WASIImportTable.moduleName).\($0)" } + [SuspensionPoints.qualifiedName])
        let prepared: [UInt8]
        do {
            prepared = try GlobalExporter.exportMutableGlobals(asyncified)
        } catch {
            throw .invalid(reason: error.description)
        }
        let module = try Self.parse(prepared)
        store(prepared, at: cached)
        return PreparedModule(hash: SHA256.hex(of: prepared), bytes: prepared, module: module)
    }

    static func parse(_ bytes: [UInt8]) throws(ModulePreparationError) -> Module {
        do {
            return try parseWasm(bytes: bytes)
        } catch {
            throw .invalid(reason: "\(error)")
        }
    }

    /// A prepared module also imports its suspension point.
    static func checkInterface(_ module: Module, prepared: Bool = false) throws(ModulePreparationError) {
        for entry in module.imports {
            if prepared, entry.module == SuspensionPoints.importModule, entry.name == SuspensionPoints.importName { continue }
            guard entry.module == WASIImportTable.moduleName, WASIImportTable.offered.contains(entry.name) else {
                throw .unsupportedImport(module: entry.module, name: entry.name)
            }
        }
        for required in ["_start", "memory"] where !module.exports.contains(where: { $0.name == required }) {
            throw .missingExport(required)
        }
    }

    /// `imports` are `module.name`.
    private func asyncify(_ bytes: [UInt8], imports: [String]) throws(ModulePreparationError) -> [UInt8] {
        guard let wasmOpt = wasmOptPath else {
            throw .asyncifyUnavailable("wasm-opt (Debian package binaryen) is not on PATH; set UNDERSTUDY_WASM_OPT")
        }
        let scratch = FileManager.default.temporaryDirectory
            .appendingPathComponent("understudy-prepare-\(ProcessInfo.processInfo.processIdentifier)-\(UInt32.random(in: 0...UInt32.max))")
        defer { try? FileManager.default.removeItem(at: scratch) }
        let input = scratch.appendingPathComponent("in.wasm")
        let output = scratch.appendingPathComponent("out.wasm")
        let importList = imports.joined(separator: ",")
        // A module that names its features (clang's `target_features`) is taken at its word; one
        // that does not (AssemblyScript's) may use any the engine runs, and wasm-opt would
        // otherwise allow only the MVP's and refuse, say, `memory.fill`.
        let names = (try? WasmBinaryReader.customSectionNames(of: bytes)) ?? []
        let features = names.contains("target_features") ? [] : Self.engineFeatures.map { "--enable-\($0)" }
        do {
            try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
            try Data(bytes).write(to: input)
            let errors = scratch.appendingPathComponent("wasm-opt.err")
            let process = try SpawnedProcess(
                wasmOpt, [input.path] + features + ["--asyncify", "--pass-arg=asyncify-imports@\(importList)", "-O2", "-o", output.path],
                stderr: .file(errors.path))
            let status = process.waitUntilExit()
            guard status == 0 else {
                let message = (try? String(contentsOf: errors, encoding: .utf8)) ?? ""
                let text = message.split(separator: "\n").first.map(String.init)
                throw ModulePreparationError.asyncifyFailed(text ?? "exit status \(status)")
            }
            return Array(try Data(contentsOf: output))
        } catch let error as ModulePreparationError {
            throw error
        } catch {
            throw .asyncifyFailed("\(error)")
        }
    }

    /// A module prepared elsewhere (the primary's, sent to its backup), taken only if its bytes
    /// are the ones `hash` names, checked before anything else is done with them; then it must
    /// be a module this preparer could have made. No wasm-opt runs.
    public static func adopt(prepared bytes: [UInt8], hash expected: String) throws(ModulePreparationError) -> PreparedModule {
        let found = SHA256.hex(of: bytes)
        guard found == expected else { throw .hashMismatch(expected: expected, found: found) }
        let module = try parse(bytes)
        try checkInterface(module, prepared: true)
        try checkPrepared(module)
        return PreparedModule(hash: found, bytes: bytes, module: module)
    }

    static func checkPrepared(_ module: Module) throws(ModulePreparationError) {
        let exports = Set(module.exports.map(\.name))
        for name in ["asyncify_start_unwind", "asyncify_stop_unwind", "asyncify_start_rewind", "asyncify_stop_rewind", SuspensionPoints.budgetExport]
        where !exports.contains(name) {
            throw .notPrepared("it does not export \(name)")
        }
    }

    /// A cache entry is the prepared module and, beside it, the SHA-256 of its bytes: an entry
    /// whose digest is missing or does not match (a torn or damaged file) is a miss, and is
    /// prepared and written again.
    private func cachedModule(at url: URL) -> PreparedModule? {
        guard let bytes = try? Array(Data(contentsOf: url)),
            let digest = try? String(contentsOf: Self.digestURL(of: url), encoding: .utf8),
            let prepared = try? Self.adopt(prepared: bytes, hash: digest.trimmingCharacters(in: .whitespacesAndNewlines))
        else { return nil }
        ModuleCacheLimit.touch(url)
        ModuleCacheLimit.touch(Self.digestURL(of: url))
        return prepared
    }

    static func digestURL(of url: URL) -> URL { url.appendingPathExtension("sha256") }

    /// The module, then its digest, each written whole and renamed into place (rename(2) is
    /// atomic and replaces what is there), so a reader sees an old entry, a new one, or a miss.
    /// A cache that cannot be written only costs the next start another wasm-opt run.
    private func store(_ bytes: [UInt8], at url: URL) {
        do {
            try FileManager.default.createDirectory(at: cacheDirectory, withIntermediateDirectories: true)
            try Self.writeReplacing(url, bytes)
            try Self.writeReplacing(Self.digestURL(of: url), Array(SHA256.hex(of: bytes).utf8))
        } catch {
            return
        }
        ModuleCacheLimit.trim(cacheDirectory, keeping: [url.lastPathComponent, Self.digestURL(of: url).lastPathComponent])
    }

    static func writeReplacing(_ url: URL, _ bytes: [UInt8]) throws {
        let temporary = url.deletingLastPathComponent()
            .appendingPathComponent(".\(url.lastPathComponent).\(ProcessInfo.processInfo.processIdentifier).tmp")
        do {
            try Data(bytes).write(to: temporary)
            guard rename(temporary.path, url.path) == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        } catch {
            try? FileManager.default.removeItem(at: temporary)
            throw error
        }
    }

    static func findOnPath(_ name: String) -> String? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        for directory in path.split(separator: ":") {
            let candidate = "\(directory)/\(name)"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return nil
    }
}
