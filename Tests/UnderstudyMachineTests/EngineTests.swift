import Foundation
import UnderstudyCore
import WAT
import XCTest

@testable import UnderstudyMachine

struct MissingEngine: Error, CustomStringConvertible {
    let reason: String
    var description: String { "wasmtime's library is missing (\(reason)): scripts/setup.sh installs it" }
}

/// What the machine asks of its engines, checked on both: the same states from the same world,
/// memory that stays in place, and wasmtime's configuration and compiled-module cache.
final class EngineTests: XCTestCase {
    /// Fails (never skips) where wasmtime's library is missing: setup installs it.
    private func runtime() throws -> WasmtimeRuntime {
        do {
            return try WasmtimeRuntime.load()
        } catch {
            throw MissingEngine(reason: error.description)
        }
    }

    /// kv under the same scripted world on each engine: every state captured at a suspension
    /// (memory, globals, devices, the unwound call chain) is the same on both.
    func testBothEnginesReachTheSameStatesFromTheSameWorld() throws {
        _ = try runtime()
        var script = ""
        for index in 0..<400 {
            script += "*3\r\n$3\r\nSET\r\n$\("k\(index)".utf8.count)\r\nk\(index)\r\n$40\r\n\(String(repeating: "x", count: 40))\r\n"
            if index % 9 == 0 { script += "*2\r\n$4\r\nINCR\r\n$1\r\nn\r\n*1\r\n$6\r\nDBSIZE\r\n" }
        }
        let bytes = Array(script.utf8)
        let chunks = stride(from: 0, to: bytes.count, by: 1_500).map { Array(bytes[$0..<min($0 + 1_500, bytes.count)]) }
        func states(on engine: GuestEngineKind) throws -> (states: [MachineState], replies: [UInt8]) {
            let world = ScriptedWorld(incoming: chunks, interruptEvery: 2, suspension: SuspensionRequest())
            let machine = try Machine(
                prepared: try Fixtures.guest("kv"), world: world, suspension: world.suspension,
                configuration: MachineConfiguration(arguments: ["kv"], listenerCount: 1, engine: engine))
            var states: [MachineState] = []
            machine.onSuspended = { machine in
                if world.finished { throw ScriptedWorld.Finished() }
                states.append(try machine.captureState())
            }
            XCTAssertThrowsError(try machine.run())
            return (states, world.sent)
        }
        let interpreted = try states(on: .wasmkit)
        let compiled = try states(on: .wasmtime)
        XCTAssertGreaterThan(interpreted.states.count, 20)
        XCTAssertEqual(interpreted.states.count, compiled.states.count)
        for (index, (left, right)) in zip(interpreted.states, compiled.states).enumerated() {
            if let difference = right.firstDifference(from: left) { return XCTFail("state \(index): \(difference)") }
        }
        XCTAssertEqual(interpreted.replies, compiled.replies)
    }

    /// Memory stays where it was mapped while the guest grows it (the dirty tracker protects it in
    /// place): kv's heap grows several-fold under suspensions, and its base never moves.
    func testLinearMemoryNeverMovesAsItGrows() throws {
        let world = ScriptedWorld(
            incoming: Fixtures.setCommands(count: 3_000, valueBytes: 1_000, chunk: 16_384), interruptEvery: 2, suspension: SuspensionRequest())
        let machine = try Machine(
            prepared: try Fixtures.guest("kv"), world: world, suspension: world.suspension,
            configuration: MachineConfiguration(arguments: ["kv"], listenerCount: 1, engine: Fixtures.engine))
        var bases: Set<UInt> = []
        var sizes: [Int] = []
        machine.onSuspended = { machine in
            if world.finished { throw ScriptedWorld.Finished() }
            machine.withLinearMemory { memory in
                bases.insert(UInt(bitPattern: memory.baseAddress))
                sizes.append(memory.count)
            }
        }
        XCTAssertThrowsError(try machine.run())
        XCTAssertGreaterThan(sizes.last ?? 0, 2 * (sizes.first ?? .max), "the heap did not grow")
        XCTAssertEqual(bases.count, 1, "memory moved on \(Fixtures.engine)")
    }

    /// wasmtime canonicalizes the NaNs arithmetic makes (what keeps its machines' bits the same on
    /// any host): a NaN from 0/0 and the sum of two NaNs with payloads are both 0x7fc00000. The
    /// inputs come from memory, so Asyncify's optimizer cannot fold them at preparation.
    func testWasmtimeCanonicalizesTheNaNsArithmeticMakes() throws {
        _ = try runtime()
        let prepared = try Fixtures.preparer().prepare(
            bytes: try wat2wasm(
                #"""
                (module
                  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
                  (memory (export "memory") 1)
                  (data (i32.const 64) "\00\00\00\00\01\00\a0\7f\23\01\c0\ff")
                  (func (export "_start")
                    (i32.store (i32.const 16) (i32.reinterpret_f32 (f32.div (f32.load (i32.const 64)) (f32.load (i32.const 64)))))
                    (i32.store (i32.const 20) (i32.reinterpret_f32 (f32.add (f32.load (i32.const 68)) (f32.load (i32.const 72)))))
                    (i32.store (i32.const 0) (i32.const 16))
                    (i32.store (i32.const 4) (i32.const 8))
                    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
                """#))
        let world = ScriptedWorld(incoming: [], suspension: SuspensionRequest())
        let machine = try Machine(
            prepared: prepared, world: world, suspension: world.suspension,
            configuration: MachineConfiguration(arguments: ["nan"], listenerCount: 0, engine: .wasmtime))
        XCTAssertEqual(try machine.run(), 0)
        XCTAssertEqual(world.consoleOutput, [0x00, 0x00, 0xc0, 0x7f, 0x00, 0x00, 0xc0, 0x7f])
    }

    /// A compiled module in the cache that is not this engine's (torn, or another version's) is
    /// compiled again and replaced, and the guest runs.
    func testACompiledModuleThatIsNotThisEnginesIsCompiledAgain() throws {
        let runtime = try runtime()
        // A module of its own (a unique data segment), so its cache entry is this test's.
        let marker = UUID().uuidString
        let prepared = try Fixtures.preparer().prepare(
            bytes: try wat2wasm(
                """
                (module
                  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
                  (memory (export "memory") 1)
                  (data (i32.const 0) "\(marker)")
                  (func (export "_start") (call $exit (i32.load8_u (i32.const 0)))))
                """))
        func run() throws -> Int32 {
            let world = ScriptedWorld(incoming: [], suspension: SuspensionRequest())
            return try Machine(
                prepared: prepared, world: world, suspension: world.suspension,
                configuration: MachineConfiguration(arguments: ["marker"], listenerCount: 0, engine: .wasmtime)
            ).run()
        }
        let expected = Int32(marker.utf8.first!)
        XCTAssertEqual(try run(), expected)
        let cached = runtime.compiledModuleURL(for: prepared)
        defer { try? FileManager.default.removeItem(at: cached) }
        let compiled = try Data(contentsOf: cached)
        XCTAssertGreaterThan(compiled.count, 0)

        try Data("not a compiled module".utf8).write(to: cached)
        runtime.forgetCompiledModules()
        XCTAssertEqual(try run(), expected)
        XCTAssertEqual(try Data(contentsOf: cached).prefix(4), compiled.prefix(4), "the damaged entry was not replaced")
    }
}
