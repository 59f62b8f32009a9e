import CWasmtime
import Foundation
import Synchronization
import UnderstudyCore

struct WasmtimeUnavailable: Error, CustomStringConvertible {
    let description: String
}

/// wasmtime's library, opened once per process, and its one engine: the configuration every
/// machine needs of it, and the modules it compiled.
final class WasmtimeRuntime: @unchecked Sendable {
    /// wasmtime's version, as the wheel setup installs: part of the compiled modules' cache key.
    static let version = "50.0.1"
    let api: understudy_wasmtime_api
    let engine: OpaquePointer
    /// Compiled modules by prepared hash. wasmtime's modules are thread-safe and kept for the
    /// process: a process runs one guest, or a few promotions of it.
    private let modules = Mutex<[String: CompiledModule]>([:])

    /// wasmtime's modules may be shared between threads.
    private struct CompiledModule: @unchecked Sendable {
        let pointer: OpaquePointer
    }

    private static let loaded: Result<WasmtimeRuntime, WasmtimeUnavailable> = {
        do throws(WasmtimeUnavailable) {
            return .success(try WasmtimeRuntime())
        } catch {
            return .failure(error)
        }
    }()

    /// The runtime, or why the library cannot be used here.
    static func load() throws(WasmtimeUnavailable) -> WasmtimeRuntime { try loaded.get() }
    static var shared: WasmtimeRuntime? { try? loaded.get() }

    /// `UNDERSTUDY_WASMTIME_LIBRARY`, else where setup put the wheel's library at build time.
    static var libraryPath: String {
        ProcessInfo.processInfo.environment["UNDERSTUDY_WASMTIME_LIBRARY"] ?? String(cString: understudy_wasmtime_default_path())
    }

    private init() throws(WasmtimeUnavailable) {
        let path = Self.libraryPath
        guard !path.isEmpty else { throw WasmtimeUnavailable(description: "no wasmtime library is known (set UNDERSTUDY_WASMTIME_LIBRARY)") }
        var reason = [CChar](repeating: 0, count: 512)
        guard let api = understudy_wasmtime_load(path, &reason, reason.count) else {
            throw WasmtimeUnavailable(description: String(decoding: reason.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
        self.api = api.pointee
        let config = self.api.wasm_config_new()
        // Memory stays where it was first mapped (a 4 GiB reservation holds any wasm32 memory),
        // as anonymous memory, not a copy-on-write image of the module: userfaultfd
        // write-protect and PAGEMAP_SCAN track it in place.
        self.api.wasmtime_config_memory_may_move_set(config, false)
        self.api.wasmtime_config_memory_reservation_set(config, 1 << 32)
        self.api.wasmtime_config_memory_guard_size_set(config, 2 << 30)
        self.api.wasmtime_config_memory_init_cow_set(config, false)
        // Primary, backup and replay must compute the same bits, whichever engine each runs.
        self.api.wasmtime_config_cranelift_nan_canonicalization_set(config, true)
        guard let engine = self.api.wasm_engine_new_with_config(config) else {
            throw WasmtimeUnavailable(description: "wasmtime refused its configuration")
        }
        self.engine = engine
    }

    /// `prepared` compiled for this engine: from memory, from the cache directory, or compiled
    /// (then written there, like the prepared module itself).
    func module(for prepared: PreparedModule) throws(MachineError) -> OpaquePointer {
        if let module = modules.withLock({ $0[prepared.hash] }) { return module.pointer }
        let cached = compiledModuleURL(for: prepared)
        var module: OpaquePointer?
        // A file that is not this engine's (another version or configuration, or torn) is
        // refused by wasmtime's own checks, and compiled again.
        if FileManager.default.fileExists(atPath: cached.path),
            let error = api.wasmtime_module_deserialize_file(engine, cached.path, &module)
        {
            api.wasmtime_error_delete(error)
            module = nil
        } else if module != nil {
            ModuleCacheLimit.touch(cached)
        }
        if module == nil {
            let error = prepared.bytes.withUnsafeBufferPointer { api.wasmtime_module_new(engine, $0.baseAddress, $0.count, &module) }
            if let error { throw .instantiation("wasmtime cannot compile the module: \(message(of: error))") }
            if let module { write(module, to: cached) }
        }
        guard let module else { throw .instantiation("wasmtime compiled no module") }
        let compiled = CompiledModule(pointer: module)
        let kept = modules.withLock { modules in
            if let raced = modules[prepared.hash] { return raced }
            modules[prepared.hash] = compiled
            return compiled
        }
        if kept.pointer != module { api.wasmtime_module_delete(module) }
        return kept.pointer
    }

    func compiledModuleURL(for prepared: PreparedModule) -> URL {
        ModulePreparer.defaultCacheDirectory.appendingPathComponent("\(prepared.hash).wasmtime-\(Self.version).cwasm")
    }

    /// Tests: the next machine of each module reads the cache directory again. The modules
    /// are left alive (a machine may still use one).
    func forgetCompiledModules() {
        modules.withLock { $0.removeAll() }
    }

    /// A cache that cannot be written only costs the next start a compilation.
    private func write(_ module: OpaquePointer, to url: URL) {
        var serialized = wasm_byte_vec_t()
        if let error = api.wasmtime_module_serialize(module, &serialized) { return api.wasmtime_error_delete(error) }
        defer { api.wasm_byte_vec_delete(&serialized) }
        let bytes = Array(UnsafeBufferPointer(start: serialized.data, count: serialized.size))
        try? FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        guard (try? ModulePreparer.writeReplacing(url, bytes)) != nil else { return }
        ModuleCacheLimit.trim(url.deletingLastPathComponent(), keeping: [url.lastPathComponent])
    }

    /// An error's message; the error is consumed.
    func message(of error: OpaquePointer) -> String {
        message { api.wasmtime_error_message(error, &$0) } release: { api.wasmtime_error_delete(error) }
    }

    /// A trap's message; the trap is consumed.
    func message(ofTrap trap: OpaquePointer) -> String {
        message { api.wasm_trap_message(trap, &$0) } release: { api.wasm_trap_delete(trap) }
    }

    private func message(_ fill: (inout wasm_byte_vec_t) -> Void, release: () -> Void) -> String {
        var text = wasm_byte_vec_t()
        fill(&text)
        defer {
            api.wasm_byte_vec_delete(&text)
            release()
        }
        return Self.oneLine(text)
    }

    /// wasmtime's messages are a context, a backtrace and, last, the cause ("Caused by: wasm
    /// trap: …"): the cause is the one line worth saying.
    private static func oneLine(_ text: wasm_byte_vec_t) -> String {
        let bytes = UnsafeBufferPointer(start: text.data, count: text.size)
        let message = String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
        let lines = message.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        return lines.last ?? message
    }
}
