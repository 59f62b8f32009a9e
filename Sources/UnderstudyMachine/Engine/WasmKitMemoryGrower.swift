import WasmKit

/// WasmKit has no public `memory.grow`; this tiny module imports a memory and grows it, so a
/// restored machine gets back the memory size its guest had grown to.
enum WasmKitMemoryGrower {
    private static let module: [UInt8] = [
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
        0x01, 0x06, 0x01, 0x60, 0x01, 0x7f, 0x01, 0x7f,  // type: (i32) -> i32
        0x02, 0x0f, 0x01, 0x03, 0x65, 0x6e, 0x76, 0x06, 0x6d, 0x65, 0x6d, 0x6f, 0x72, 0x79, 0x02, 0x00, 0x00,  // import env.memory
        0x03, 0x02, 0x01, 0x00,  // function 0 has type 0
        0x07, 0x08, 0x01, 0x04, 0x67, 0x72, 0x6f, 0x77, 0x00, 0x00,  // export "grow"
        0x0a, 0x08, 0x01, 0x06, 0x00, 0x20, 0x00, 0x40, 0x00, 0x0b,  // local.get 0; memory.grow; end
    ]

    /// Grows `memory` by `pages` of 64 KiB; returns the previous size in pages.
    static func grow(_ memory: Memory, by pages: UInt32, store: Store) throws -> UInt32 {
        let parsed = try parseWasm(bytes: module)
        var imports = Imports()
        imports.define(module: "env", name: "memory", memory)
        let instance = try parsed.instantiate(store: store, imports: imports)
        guard let grow = instance.exports[function: "grow"], case .i32(let previous) = try grow.invoke([.i32(pages)]).first
        else { throw MachineError.instantiation("memory.grow helper is malformed") }
        guard previous != UInt32.max else {
            throw MachineError.instantiation("the guest's memory cannot grow by \(pages) pages (its declared maximum is too small)")
        }
        return previous
    }
}
