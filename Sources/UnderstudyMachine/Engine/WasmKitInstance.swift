import Synchronization
// `Store.resourceLimiter` is public behind this SPI in WasmKit 0.4.2: the one way to fail a
// guest's `memory.grow` past the machine's limit.
@_spi(Fuzzing) import WasmKit

/// Denies every `memory.grow` past the machine's limit. Tables are the module's business.
private final class MemoryLimiter: ResourceLimiter {
    let limitBytes: UInt64
    init(limitBytes: UInt64) { self.limitBytes = limitBytes }
    func limitMemoryGrowth(to desired: Int) throws -> Bool { UInt64(desired) <= limitBytes }
    func limitTableGrowth(to desired: Int) throws -> Bool { true }
}

/// The guest on WasmKit's interpreter.
final class WasmKitInstance: GuestInstance {
    private let store: Store
    private let instance: Instance
    private let memory: Memory
    let globals: [GuestGlobal]

    init(_ prepared: PreparedModule, hostFunctions: [HostFunction], memoryLimitBytes: UInt64) throws(MachineError) {
        let engine = Engine(configuration: EngineConfiguration(memoryBoundsChecking: .mprotect))
        store = Store(engine: engine)
        store.resourceLimiter = MemoryLimiter(limitBytes: memoryLimitBytes)
        var imports = Imports()
        for host in hostFunctions {
            let body = host.body
            let hasResult = !host.results.isEmpty
            let function = Function(store: store, parameters: host.parameters.map(\.wasmKit), results: host.results.map(\.wasmKit)) {
                _, parameters, results in
                let result = try withUnsafeTemporaryAllocation(of: UInt64.self, capacity: max(parameters.count, 1)) { slots in
                    for (index, value) in parameters.enumerated() { slots[index] = value.bits }
                    return try body(HostCallArguments(base: UnsafeRawPointer(slots.baseAddress!), stride: 8))
                }
                if hasResult { results[0] = .i32(result) }
            }
            imports.define(module: host.module, name: host.name, function)
        }
        do {
            instance = try prepared.module.instantiate(store: store, imports: imports)
        } catch {
            throw .instantiation("\(error)")
        }
        guard let memory = instance.exports[memory: "memory"] else { throw .instantiation("the guest exports no memory") }
        self.memory = memory
        globals = instance.exports.compactMap { name, value -> GuestGlobal? in
            guard case .global(let global) = value else { return nil }
            return GuestGlobal(
                name: name, read: { MachineState.GlobalState(name: name, value: global.value) },
                write: { (state: MachineState.GlobalState) throws(MachineError) in
                    do {
                        try global.assign(state.value)
                    } catch {
                        throw .instantiation("cannot set the global \(name): \(error)")
                    }
                })
        }
    }

    var memoryByteCount: Int { memory.byteCount }

    func withMemory<T>(_ body: (UnsafeMutableRawBufferPointer) throws -> T) rethrows -> T {
        try memory.withUnsafeMutableBufferPointer(offset: 0, count: memory.byteCount, body)
    }

    func growMemory(by pages: UInt32) throws(MachineError) -> UInt32 {
        do {
            return try WasmKitMemoryGrower.grow(memory, by: pages, store: store)
        } catch let error as MachineError {
            throw error
        } catch {
            throw .instantiation("cannot grow the guest's memory: \(error)")
        }
    }

    func function(_ name: String) -> GuestFunction? {
        guard let function = instance.exports[function: name] else { return nil }
        return GuestFunction { arguments in _ = try function.invoke(arguments.map { Value.i32($0) }) }
    }
}

extension GuestValueType {
    fileprivate var wasmKit: ValueType {
        switch self {
        case .i32: return .i32
        case .i64: return .i64
        case .f32: return .f32
        case .f64: return .f64
        }
    }
}

extension Value {
    /// The value's bits, little-endian in a slot (references and vectors: 0; no WASI call takes one).
    fileprivate var bits: UInt64 {
        switch self {
        case .i32(let v): return UInt64(v)
        case .i64(let v): return v
        case .f32(let v): return UInt64(v)
        case .f64(let v): return v
        default: return 0
        }
    }
}

extension MachineState.GlobalState {
    fileprivate init?(name: String, value: Value) {
        switch value {
        case .i32(let v): self.init(name: name, kind: .i32, bits: UInt64(v))
        case .i64(let v): self.init(name: name, kind: .i64, bits: v)
        case .f32(let v): self.init(name: name, kind: .f32, bits: UInt64(v))
        case .f64(let v): self.init(name: name, kind: .f64, bits: v)
        default: return nil  // references and vectors: no C guest keeps them in globals
        }
    }

    fileprivate var value: Value {
        switch kind {
        case .i32: return .i32(UInt32(truncatingIfNeeded: bits))
        case .i64: return .i64(bits)
        case .f32: return .f32(UInt32(truncatingIfNeeded: bits))
        case .f64: return .f64(bits)
        }
    }
}
