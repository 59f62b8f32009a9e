import WasmKit

/// Drives Binaryen's Asyncify instrumentation: unwinding the guest's whole stack into a buffer in
/// its own linear memory, and rewinding it. The state is tracked host-side, because asking the
/// guest (`asyncify_get_state`) on every host call doubled the cost of a call (DESIGN.md).
final class AsyncifyController {
    enum State: Equatable {
        case normal
        case unwinding
        case rewinding
    }

    private let startUnwindExport: Function
    private let stopUnwindExport: Function
    private let startRewindExport: Function
    private let stopRewindExport: Function
    private let memory: GuestMemoryView
    private let stackPointer: Global
    /// The buffer header (current, end) lives at `dataAddress`; the saved stack follows it.
    /// It is placed at each unwind just below the guest's shadow-stack pointer: that memory is
    /// free (wasm32 C never uses memory below the stack pointer), and Asyncify runs no prologue
    /// or epilogue while unwinding or rewinding, so nothing moves the pointer until the rewind
    /// ends. Memory the host grew for itself would not do: this wasi-libc's malloc claims all
    /// memory up to the size it finds at its first call.
    private(set) var dataAddress: UInt32 = 0
    let dataSize: UInt32
    private(set) var state: State = .normal

    init(instance: Instance, memory: GuestMemoryView, dataSize: UInt32) throws(MachineError) {
        func export(_ name: String) throws(MachineError) -> Function {
            guard let function = instance.exports[function: name] else {
                throw .instantiation("the prepared module lacks \(name): it was not Asyncify-instrumented")
            }
            return function
        }
        startUnwindExport = try export("asyncify_start_unwind")
        stopUnwindExport = try export("asyncify_stop_unwind")
        startRewindExport = try export("asyncify_start_rewind")
        stopRewindExport = try export("asyncify_stop_rewind")
        // wasm-ld makes the shadow-stack pointer the module's first global; preparation exported it.
        guard let stackPointer = instance.exports[global: "__stack_pointer"]
            ?? instance.exports[global: GlobalExporter.exportedGlobalPrefix + "0"]
        else { throw .instantiation("the guest has no shadow-stack pointer global (not built by clang/wasm-ld?)") }
        self.stackPointer = stackPointer
        self.memory = memory
        self.dataSize = dataSize
    }

    func startUnwind() throws {
        precondition(state == .normal, "unwind started while \(state)")
        guard case .i32(let pointer) = stackPointer.value, pointer >= dataSize + 1024 else {
            throw MachineError.suspension("the guest's stack has no room for a \(dataSize)-byte unwind buffer")
        }
        dataAddress = (pointer - dataSize) & ~15
        try memory.store(dataAddress + 8, at: dataAddress)
        try memory.store(dataAddress + dataSize, at: dataAddress + 4)
        try startUnwindExport.invoke([.i32(dataAddress)])
        state = .unwinding
    }

    func stopUnwind() throws {
        precondition(state == .unwinding, "unwind stopped while \(state)")
        try stopUnwindExport.invoke()
        state = .normal
        let used = try memory.load(UInt32.self, at: dataAddress)
        guard used <= dataAddress + dataSize else {
            throw MachineError.suspension("the guest's stack (\(used - dataAddress) bytes) overflowed the \(dataSize)-byte unwind buffer")
        }
    }

    /// A restored machine rewinds the stack its original unwound, where that one left it.
    func adoptUnwoundStack(at address: UInt32) {
        precondition(state == .normal, "stack adopted while \(state)")
        dataAddress = address
    }

    func startRewind() throws {
        precondition(state == .normal, "rewind started while \(state)")
        try startRewindExport.invoke([.i32(dataAddress)])
        state = .rewinding
    }

    func stopRewind() throws {
        precondition(state == .rewinding, "rewind stopped while \(state)")
        try stopRewindExport.invoke()
        state = .normal
    }
}
