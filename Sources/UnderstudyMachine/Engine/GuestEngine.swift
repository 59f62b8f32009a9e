import Foundation
import Synchronization
import UnderstudyCore

/// What runs the guest's code. The machine (devices, Asyncify, checkpoints) is the same on
/// both; a machine's state is plain values (`MachineState`), so a checkpoint taken under one
/// engine restores under the other, and the two sides of an `active` pair may differ.
public enum GuestEngineKind: String, CaseIterable, Sendable {
    /// WasmKit's interpreter: pure Swift, always there.
    case wasmkit
    /// wasmtime's Cranelift compiler, from `_libwasmtime.so` (PyPI's wheel, installed by setup).
    case wasmtime

    /// The engine this process's machines run on unless told otherwise: the one chosen on the
    /// command line (`--engine`), else `UNDERSTUDY_ENGINE`, else wasmtime where its library
    /// loads, else WasmKit. Each process chooses its own: a backup need not run its primary's.
    public static var preferred: GuestEngineKind {
        if let chosen = chosen.withLock({ $0 }) { return chosen }
        if let named = ProcessInfo.processInfo.environment[environmentVariable], let kind = GuestEngineKind(rawValue: named) {
            return kind
        }
        return WasmtimeRuntime.shared.map { _ in .wasmtime } ?? .wasmkit
    }

    public static let environmentVariable = "UNDERSTUDY_ENGINE"
    private static let chosen = Mutex<GuestEngineKind?>(nil)

    /// Makes `kind` the process's engine, or says in one line why it cannot run here.
    public static func choose(_ kind: GuestEngineKind) throws(MachineError) {
        if let reason = kind.unavailability { throw unavailable(kind, reason) }
        chosen.withLock { $0 = kind }
    }

    static func unavailable(_ kind: GuestEngineKind, _ reason: String) -> MachineError {
        .instantiation("the \(kind.rawValue) engine is unavailable: \(reason)")
    }

    /// Why this engine cannot run here, or nil.
    public var unavailability: String? {
        switch self {
        case .wasmkit: return nil
        case .wasmtime:
            do {
                _ = try WasmtimeRuntime.load()
                return nil
            } catch {
                return error.description
            }
        }
    }
}

/// The value types of host-function signatures and globals (what C guests use).
enum GuestValueType: Sendable {
    case i32, i64, f32, f64
}

/// The arguments of one host call, in the engine's own slots: each starts with the value's
/// little-endian bits (WasmKit's converted to 8-byte slots, wasmtime's raw 16-byte ones).
struct HostCallArguments {
    let base: UnsafeRawPointer
    let stride: Int

    /// The i32 argument at `index`, as WASI passes pointers, lengths and descriptors (an i64's low half).
    func u32(_ index: Int) -> UInt32 {
        base.load(fromByteOffset: index * stride, as: UInt32.self)
    }
}

/// A function the host offers the guest. `body` returns the call's i32 result (ignored when
/// `results` is empty); what it throws ends the guest's call and comes out of the engine's
/// `invoke` unchanged.
struct HostFunction {
    let module: String
    let name: String
    let parameters: [GuestValueType]
    let results: [GuestValueType]
    let body: (HostCallArguments) throws -> UInt32
}

/// An exported function of the guest taking i32s and returning nothing (`_start`, Asyncify's).
struct GuestFunction {
    let invoke: ([UInt32]) throws -> Void
}

/// An exported global of the guest.
struct GuestGlobal {
    let name: String
    /// nil for a kind no C guest keeps in a global (references, vectors).
    let read: () -> MachineState.GlobalState?
    let write: (MachineState.GlobalState) throws(MachineError) -> Void
}

/// One instantiated guest module: what the machine needs of an engine. Confined to the thread
/// that made it.
protocol GuestInstance: AnyObject {
    var memoryByteCount: Int { get }
    /// The guest's whole linear memory in place. It does not move while the machine lives
    /// (the dirty tracker write-protects it where it is), though it may grow.
    func withMemory<T>(_ body: (UnsafeMutableRawBufferPointer) throws -> T) rethrows -> T
    /// Grows memory by `pages` of 64 KiB; returns the previous size in pages.
    func growMemory(by pages: UInt32) throws(MachineError) -> UInt32
    /// Every exported global, by name.
    var globals: [GuestGlobal] { get }
    func function(_ name: String) -> GuestFunction?
}

/// Makes instances of prepared modules.
enum GuestEngines {
    static func instantiate(
        _ prepared: PreparedModule, on kind: GuestEngineKind, hostFunctions: [HostFunction], memoryLimitBytes: UInt64
    ) throws(MachineError) -> any GuestInstance {
        if let initial = try? WasmBinaryReader.initialMemoryBytes(of: prepared.bytes), initial > memoryLimitBytes {
            throw .instantiation("the guest's initial memory (\(initial) bytes) exceeds its memory limit (\(memoryLimitBytes) bytes)")
        }
        switch kind {
        case .wasmkit:
            return try WasmKitInstance(prepared, hostFunctions: hostFunctions, memoryLimitBytes: memoryLimitBytes)
        case .wasmtime:
            let runtime: WasmtimeRuntime
            do {
                runtime = try WasmtimeRuntime.load()
            } catch {
                throw GuestEngineKind.unavailable(.wasmtime, error.description)
            }
            return try WasmtimeInstance(prepared, runtime: runtime, hostFunctions: hostFunctions, memoryLimitBytes: memoryLimitBytes)
        }
    }
}
