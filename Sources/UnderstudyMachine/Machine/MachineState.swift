import UnderstudyCore

/// The complete state of a suspended machine, as plain values: what a checkpoint carries.
/// Memory, every exported global (preparation exported all mutable ones), the devices' state,
/// and where the guest's unwound stack lies. Firecracker's `MicrovmState` pattern: the sum of
/// each part's own saved state.
public struct MachineState: Equatable, Sendable {
    public var memory: [UInt8]
    public var globals: [GlobalState]
    public var descriptors: DescriptorTable
    /// Where Asyncify's buffer goes to rewind the guest's call chain.
    public var unwindDataAddress: UInt32
    /// The guest's call chain as Asyncify saved it (the buffer's header and frames): kept out of
    /// `memory`, which holds the guest's own bytes where the buffer was.
    public var unwoundStack: [UInt8]

    public init(memory: [UInt8], globals: [GlobalState], descriptors: DescriptorTable, unwindDataAddress: UInt32, unwoundStack: [UInt8] = []) {
        self.memory = memory
        self.globals = globals
        self.descriptors = descriptors
        self.unwindDataAddress = unwindDataAddress
        self.unwoundStack = unwoundStack
    }

    public struct GlobalState: Equatable, Sendable {
        public enum Kind: UInt8, Sendable {
            case i32, i64, f32, f64
        }

        public var name: String
        public var kind: Kind
        /// The value's bits, zero-extended.
        public var bits: UInt64

        public init(name: String, kind: Kind, bits: UInt64) {
            self.name = name
            self.kind = kind
            self.bits = bits
        }
    }
}
