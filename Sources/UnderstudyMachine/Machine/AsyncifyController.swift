/// Drives Binaryen's Asyncify instrumentation: unwinding the guest's whole stack into a buffer in
/// its own linear memory, and rewinding it. The state is tracked host-side, because asking the
/// guest (`asyncify_get_state`) on every host call doubled the cost of a call (DESIGN.md).
final class AsyncifyController {
    enum State: Equatable {
        case normal
        case unwinding
        case rewinding
    }

    private let startUnwindExport: GuestFunction
    private let stopUnwindExport: GuestFunction
    private let startRewindExport: GuestFunction
    private let stopRewindExport: GuestFunction
    private let memory: GuestMemoryView
    /// nil for a guest without one (not built by wasm-ld): its buffer goes at the bottom of memory.
    private let stackPointer: GuestGlobal?
    /// The buffer header (current, end) lives at `dataAddress`; the saved stack follows it. It is
    /// in memory only while an unwind or a rewind runs (Asyncify runs no guest code then that
    /// reads memory, nor a prologue or epilogue that moves the stack pointer): what it covers is
    /// kept aside and put back as each ends, and while the machine is suspended its stack is held
    /// here (`unwoundStack`), so memory is the guest's own. So the buffer may go anywhere; it
    /// goes just below the shadow-stack pointer. Placed there for good, it overwrote the data of
    /// a guest with a small stack (wasm-ld puts the zero-initialised data right below the stack,
    /// and nothing in the binary says where that ends); memory the host grew for itself would
    /// not do either: this wasi-libc's malloc claims all memory up to the size it finds at its
    /// first call.
    private(set) var dataAddress: UInt32 = 0
    let dataSize: UInt32
    private(set) var state: State = .normal
    /// While suspended: the buffer's header and the frames Asyncify saved.
    private(set) var unwoundStack: [UInt8] = []
    /// What the buffer covers while it is in memory.
    private var displaced: [UInt8] = []

    init(instance: any GuestInstance, memory: GuestMemoryView, dataSize: UInt32) throws(MachineError) {
        func export(_ name: String) throws(MachineError) -> GuestFunction {
            guard let function = instance.function(name) else {
                throw .instantiation("the prepared module lacks \(name): it was not Asyncify-instrumented")
            }
            return function
        }
        startUnwindExport = try export("asyncify_start_unwind")
        stopUnwindExport = try export("asyncify_stop_unwind")
        startRewindExport = try export("asyncify_start_rewind")
        stopRewindExport = try export("asyncify_stop_rewind")
        // wasm-ld makes the shadow-stack pointer the module's first global; preparation exported it.
        let globals = instance.globals
        stackPointer = globals.first(where: { $0.name == "__stack_pointer" })
            ?? globals.first(where: { $0.name == GlobalExporter.exportedGlobalPrefix + "0" })
        self.memory = memory
        self.dataSize = dataSize
    }

    func startUnwind() throws {
        precondition(state == .normal, "unwind started while \(state)")
        var pointer: UInt32 = 0
        if let stackPointer {
            guard let value = stackPointer.read(), value.kind == .i32 else { throw MachineError.suspension("the shadow-stack pointer is not an i32") }
            pointer = UInt32(truncatingIfNeeded: value.bits)
        }
        dataAddress = pointer >= dataSize + 16 ? (pointer - dataSize) & ~15 : 16
        displaced = try memory.bytes(at: dataAddress, count: dataSize)
        try memory.store(dataAddress + 8, at: dataAddress)
        try memory.store(dataAddress + dataSize, at: dataAddress + 4)
        try startUnwindExport.invoke([dataAddress])
        state = .unwinding
    }

    func stopUnwind() throws {
        precondition(state == .unwinding, "unwind stopped while \(state)")
        try stopUnwindExport.invoke([])
        state = .normal
        let used = try memory.load(UInt32.self, at: dataAddress)
        guard used >= dataAddress + 8, used <= dataAddress + dataSize else {
            throw MachineError.suspension("the guest's stack (\(used &- dataAddress) bytes) overflowed the \(dataSize)-byte unwind buffer")
        }
        unwoundStack = try memory.bytes(at: dataAddress, count: used - dataAddress)
        displaced.removeLast(displaced.count - unwoundStack.count)  // the unwind wrote no further
        try putBack()
    }

    /// A restored machine rewinds the stack its original unwound, where that one left it.
    func adoptUnwoundStack(at address: UInt32, stack: [UInt8]) {
        precondition(state == .normal, "stack adopted while \(state)")
        dataAddress = address
        unwoundStack = stack
    }

    func startRewind() throws {
        precondition(state == .normal, "rewind started while \(state)")
        guard unwoundStack.count >= 8, UInt64(unwoundStack.count) <= UInt64(dataSize) else {
            throw MachineError.suspension("there is no unwound stack of the guest's to rewind (\(unwoundStack.count) bytes)")
        }
        displaced = try memory.bytes(at: dataAddress, count: UInt32(unwoundStack.count))
        try memory.store(bytes: unwoundStack, at: dataAddress)
        try startRewindExport.invoke([dataAddress])
        state = .rewinding
    }

    func stopRewind() throws {
        precondition(state == .rewinding, "rewind stopped while \(state)")
        try stopRewindExport.invoke([])
        state = .normal
        try putBack()
        unwoundStack = []
    }

    /// The guest's own bytes where the buffer was.
    private func putBack() throws {
        try memory.store(bytes: displaced, at: dataAddress)
        displaced = []
    }
}
