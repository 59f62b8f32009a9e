import CWasmtime

/// What a host function threw, held while wasmtime unwinds the guest's frames (a Swift error
/// cannot cross them), and thrown again from the call that entered the guest.
private final class HostFailure {
    var error: Error?
}

/// One host function as wasmtime calls it: through `hostTrampoline`, with this as its context.
private final class HostFunctionContext {
    let body: (HostCallArguments) throws -> UInt32
    let hasResult: Bool
    let failure: HostFailure
    let newTrap: @convention(c) (UnsafePointer<CChar>?, Int) -> OpaquePointer?

    init(_ function: HostFunction, failure: HostFailure, newTrap: @escaping @convention(c) (UnsafePointer<CChar>?, Int) -> OpaquePointer?) {
        body = function.body
        hasResult = !function.results.isEmpty
        self.failure = failure
        self.newTrap = newTrap
    }
}

private let hostTrampoline: wasmtime_func_unchecked_callback_t = { context, _, slots, _ in
    let host = Unmanaged<HostFunctionContext>.fromOpaque(context!).takeUnretainedValue()
    do {
        let result = try host.body(HostCallArguments(base: UnsafeRawPointer(slots!), stride: MemoryLayout<wasmtime_val_raw_t>.stride))
        if host.hasResult { slots![0].i32 = Int32(bitPattern: result) }
        return nil
    } catch {
        host.failure.error = error
        return "host call failed".withCString { host.newTrap($0, 16) }
    }
}

private let releaseHostContext: @convention(c) (UnsafeMutableRawPointer?) -> Void = { context in
    Unmanaged<HostFunctionContext>.fromOpaque(context!).release()
}

/// A trap (or wasmtime error) in the guest's code, with wasmtime's one-line message.
struct WasmtimeTrap: Error, CustomStringConvertible {
    let description: String
}

/// The guest compiled by wasmtime (Cranelift), in a store of its own.
final class WasmtimeInstance: GuestInstance {
    private let runtime: WasmtimeRuntime
    private let store: OpaquePointer
    private let context: OpaquePointer
    private var instance = wasmtime_instance_t()
    private var memory = wasmtime_memory_t()
    /// Where memory starts: fixed for the instance's life (`memory_may_move` is off), so only its
    /// size is asked of wasmtime at each access.
    private var memoryBase: UnsafeMutablePointer<UInt8>?
    private let failure = HostFailure()
    private(set) var globals: [GuestGlobal] = []

    init(_ prepared: PreparedModule, runtime: WasmtimeRuntime, hostFunctions: [HostFunction], memoryLimitBytes: UInt64) throws(MachineError) {
        self.runtime = runtime
        let api = runtime.api
        let module = try runtime.module(for: prepared)
        store = api.wasmtime_store_new(runtime.engine, nil, nil)!
        context = api.wasmtime_store_context(store)!
        api.wasmtime_store_limiter(store, Int64(clamping: memoryLimitBytes), -1, -1, -1, -1)

        let linker = api.wasmtime_linker_new(runtime.engine)!
        defer { api.wasmtime_linker_delete(linker) }
        for function in hostFunctions {
            var parameters = wasm_valtype_vec_t()
            var results = wasm_valtype_vec_t()
            Self.vector(&parameters, of: function.parameters, api: api)
            Self.vector(&results, of: function.results, api: api)
            let type = api.wasm_functype_new(&parameters, &results)
            defer { api.wasm_functype_delete(type) }
            let host = Unmanaged.passRetained(HostFunctionContext(function, failure: failure, newTrap: api.wasmtime_trap_new)).toOpaque()
            if let error = api.wasmtime_linker_define_func_unchecked(
                linker, function.module, function.module.utf8.count, function.name, function.name.utf8.count, type,
                hostTrampoline, host, releaseHostContext)
            {
                throw .instantiation("wasmtime refused the host function \(function.name): \(runtime.message(of: error))")
            }
        }
        var trap: OpaquePointer?
        let error = api.wasmtime_linker_instantiate(linker, context, module, &instance, &trap)
        do {
            if let reason = try takeFailure(error: error, trap: trap) { throw MachineError.instantiation(reason) }
        } catch let error as MachineError {
            throw error
        } catch {
            throw .instantiation("\(error)")
        }

        var memoryExport = wasmtime_extern_t()
        guard api.wasmtime_instance_export_get(context, &instance, "memory", 6, &memoryExport),
            memoryExport.kind == UInt8(UNDERSTUDY_WASMTIME_EXTERN_MEMORY)
        else { throw .instantiation("the guest exports no memory") }
        memory = memoryExport.of.memory
        memoryBase = api.wasmtime_memory_data(context, &memory)
        globals = exportedGlobals()
    }

    deinit {
        runtime.api.wasmtime_store_delete(store)
    }

    private static func vector(_ vector: inout wasm_valtype_vec_t, of types: [GuestValueType], api: understudy_wasmtime_api) {
        guard !types.isEmpty else { return api.wasm_valtype_vec_new_empty(&vector) }
        let kinds = types.map { type -> OpaquePointer? in
            switch type {
            case .i32: return api.wasm_valtype_new(UInt8(UNDERSTUDY_WASM_I32))
            case .i64: return api.wasm_valtype_new(UInt8(UNDERSTUDY_WASM_I64))
            case .f32: return api.wasm_valtype_new(UInt8(UNDERSTUDY_WASM_F32))
            case .f64: return api.wasm_valtype_new(UInt8(UNDERSTUDY_WASM_F64))
            }
        }
        api.wasm_valtype_vec_new(&vector, kinds.count, kinds)
    }

    /// A host function's own error if one ended the call, else wasmtime's reason, else nil.
    /// Consumes `error` and `trap`.
    private func takeFailure(error: OpaquePointer?, trap: OpaquePointer?) throws -> String? {
        let reason = error.map { runtime.message(of: $0) } ?? trap.map { runtime.message(ofTrap: $0) }
        guard reason != nil else { return nil }
        if let thrown = failure.error {
            failure.error = nil
            throw thrown
        }
        return reason
    }

    private func exportedGlobals() -> [GuestGlobal] {
        let api = runtime.api
        var found: [GuestGlobal] = []
        var index = 0
        var name: UnsafeMutablePointer<CChar>?
        var length = 0
        var item = wasmtime_extern_t()
        while api.wasmtime_instance_export_nth(context, &instance, index, &name, &length, &item) {
            index += 1
            guard item.kind == UInt8(UNDERSTUDY_WASMTIME_EXTERN_GLOBAL), let name else { continue }
            let exported = String(decoding: UnsafeRawBufferPointer(start: name, count: length), as: UTF8.self)
            let global = item.of.global
            found.append(
                GuestGlobal(
                    name: exported, read: { [unowned self] in self.read(global, named: exported) },
                    write: { [unowned self] (state: MachineState.GlobalState) throws(MachineError) in try self.write(global, state) }))
        }
        return found
    }

    private func read(_ global: wasmtime_global_t, named name: String) -> MachineState.GlobalState? {
        var global = global
        var value = wasmtime_val_t()
        runtime.api.wasmtime_global_get(context, &global, &value)
        switch Int(value.kind) {
        case Int(UNDERSTUDY_WASM_I32), Int(UNDERSTUDY_WASM_F32):
            return MachineState.GlobalState(
                name: name, kind: value.kind == UInt8(UNDERSTUDY_WASM_I32) ? .i32 : .f32, bits: UInt64(UInt32(bitPattern: value.of.i32)))
        case Int(UNDERSTUDY_WASM_I64), Int(UNDERSTUDY_WASM_F64):
            return MachineState.GlobalState(
                name: name, kind: value.kind == UInt8(UNDERSTUDY_WASM_I64) ? .i64 : .f64, bits: UInt64(bitPattern: value.of.i64))
        default:
            return nil
        }
    }

    private func write(_ global: wasmtime_global_t, _ state: MachineState.GlobalState) throws(MachineError) {
        var global = global
        var value = wasmtime_val_t()
        switch state.kind {
        case .i32, .f32:
            value.kind = UInt8(state.kind == .i32 ? UNDERSTUDY_WASM_I32 : UNDERSTUDY_WASM_F32)
            value.of.i32 = Int32(bitPattern: UInt32(truncatingIfNeeded: state.bits))
        case .i64, .f64:
            value.kind = UInt8(state.kind == .i64 ? UNDERSTUDY_WASM_I64 : UNDERSTUDY_WASM_F64)
            value.of.i64 = Int64(bitPattern: state.bits)
        }
        if let error = runtime.api.wasmtime_global_set(context, &global, &value) {
            throw .instantiation("cannot set the global \(state.name): \(runtime.message(of: error))")
        }
    }

    var memoryByteCount: Int { runtime.api.wasmtime_memory_data_size(context, &memory) }

    func withMemory<T>(_ body: (UnsafeMutableRawBufferPointer) throws -> T) rethrows -> T {
        assert(runtime.api.wasmtime_memory_data(context, &memory) == memoryBase, "wasmtime moved the guest's memory")
        return try body(UnsafeMutableRawBufferPointer(start: memoryBase, count: memoryByteCount))
    }

    func growMemory(by pages: UInt32) throws(MachineError) -> UInt32 {
        var previous: UInt64 = 0
        if let error = runtime.api.wasmtime_memory_grow(context, &memory, UInt64(pages), &previous) {
            throw .instantiation("the guest's memory cannot grow by \(pages) pages: \(runtime.message(of: error))")
        }
        return UInt32(previous)
    }

    func function(_ name: String) -> GuestFunction? {
        var item = wasmtime_extern_t()
        guard runtime.api.wasmtime_instance_export_get(context, &instance, name, name.utf8.count, &item),
            item.kind == UInt8(UNDERSTUDY_WASMTIME_EXTERN_FUNC)
        else { return nil }
        let function = item.of.func
        return GuestFunction { [unowned self] arguments in try self.call(function, arguments) }
    }

    /// The checked call: wasmtime verifies the guest's export has the signature asked for.
    private func call(_ function: wasmtime_func_t, _ arguments: [UInt32]) throws {
        var function = function
        let values = arguments.map { argument -> wasmtime_val_t in
            var value = wasmtime_val_t()
            value.kind = UInt8(UNDERSTUDY_WASM_I32)
            value.of.i32 = Int32(bitPattern: argument)
            return value
        }
        var trap: OpaquePointer?
        let error = runtime.api.wasmtime_func_call(context, &function, values, values.count, nil, 0, &trap)
        if let reason = try takeFailure(error: error, trap: trap) { throw WasmtimeTrap(description: reason) }
    }
}
