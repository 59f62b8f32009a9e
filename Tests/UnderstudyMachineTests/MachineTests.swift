import Foundation
import Metrics
import MetricsTestKit
import UnderstudyCheckpoint
import UnderstudyCore
import WAT
import XCTest

@testable import UnderstudyMachine

final class MachineTests: XCTestCase {
    private func machine(_ guest: String, _ world: ScriptedWorld, arguments: [String] = []) throws -> Machine {
        try Machine(
            prepared: try Fixtures.guest(guest), world: world, suspension: world.suspension,
            configuration: MachineConfiguration(arguments: [guest] + arguments, listenerCount: 1))
    }

    /// The memory limit is the machine's RAM: a `memory.grow` past it fails as wasm says (-1,
    /// and the guest goes on), one within it succeeds; a module that starts larger is refused
    /// with the reason.
    func testMemoryGrowsUpToTheLimitAndNoFurther() throws {
        // Exits with 1 if growing by 8 pages failed, 2 if growing by 1 page then failed too, 0 otherwise.
        let grower = try Fixtures.preparer().prepare(
            bytes: try wat2wasm(
                #"""
                (module
                  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
                  (memory (export "memory") 2)
                  (func (export "_start")
                    (if (i32.eq (memory.grow (i32.const 8)) (i32.const -1)) (then (call $exit (i32.const 1))))
                    (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1)) (then (call $exit (i32.const 2))))
                    (call $exit (i32.const 0))))
                """#))
        func exitCode(limitPages: UInt64) throws -> Int32 {
            let world = ScriptedWorld(incoming: [], suspension: SuspensionRequest())
            let machine = try Machine(
                prepared: grower, world: world, suspension: world.suspension,
                configuration: MachineConfiguration(arguments: ["grow"], listenerCount: 0, memoryLimitBytes: limitPages * 65_536))
            return try machine.run()
        }
        XCTAssertEqual(try exitCode(limitPages: 4), 1, "grew to 10 pages past a 4-page limit")
        XCTAssertEqual(try exitCode(limitPages: 10), 2, "grew to 11 pages past a 10-page limit")
        XCTAssertEqual(try exitCode(limitPages: 11), 0)
        XCTAssertThrowsError(try exitCode(limitPages: 1)) { error in
            XCTAssertEqual("\(error)".contains("the guest's initial memory (131072 bytes) exceeds its memory limit (65536 bytes)"), true, "\(error)")
        }
    }

    /// A WAT guest that may write (`$write`, fd_write) and exit (`$exit`): `body` follows the
    /// imports and a one-page memory.
    private func consoleGuest(_ body: String) throws -> [UInt8] {
        try wat2wasm(
            """
            (module
              (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
              (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
              (memory (export "memory") 1)
            \(body))
            """)
    }

    private func runConsoleGuest(_ bytes: [UInt8], suspendAtEveryBlock: Bool = false) throws -> (exit: Int32, console: String) {
        let prepared = try Fixtures.preparer().prepare(bytes: bytes)
        let world = ScriptedWorld(incoming: [], suspension: SuspensionRequest())
        let machine = try Machine(
            prepared: prepared, world: world, suspension: world.suspension,
            configuration: MachineConfiguration(arguments: ["guest"], listenerCount: 0, suspendAtEveryBlock: suspendAtEveryBlock))
        return (try machine.run(), String(decoding: world.consoleOutput, as: UTF8.self))
    }

    /// A module that uses bulk memory and says nothing of its features (no `target_features`,
    /// as AssemblyScript emits) is prepared and runs: wasm-opt refused it with bulk memory disabled.
    func testAModuleThatDoesNotNameItsFeaturesMayUseBulkMemory() throws {
        let bytes = try consoleGuest(
            #"""
              (data (i32.const 100) "ok\n")
              (func (export "_start")
                (memory.fill (i32.const 300) (i32.const 120) (i32.const 8))
                (memory.copy (i32.const 300) (i32.const 100) (i32.const 3))
                (i32.store (i32.const 0) (i32.const 300))
                (i32.store (i32.const 4) (i32.const 4))
                (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
                (call $exit (i32.const 0)))
            """#)
        XCTAssertFalse(try WasmBinaryReader.customSectionNames(of: bytes).contains("target_features"))
        let (exit, console) = try runConsoleGuest(bytes)
        XCTAssertEqual(exit, 0)
        XCTAssertEqual(console, "ok\nx", "memory.copy over memory.fill's bytes")
    }

    /// Suspending at every host call on a guest whose shadow stack (2 KiB above its data) is far
    /// smaller than the 16 KiB unwind buffer: the buffer lies over the data and the live stack
    /// frame while an unwind or rewind runs, and they are put back as each ends. It was refused,
    /// and with a slightly larger stack the buffer was left over the guest's data, which a printf
    /// loop linked with a 16 KiB stack then printed as garbage.
    func testTheUnwindBufferLeavesTheGuestsMemoryAsItWas() throws {
        let bytes = try consoleGuest(
            #"""
              (global $sp (mut i32) (i32.const 4096))
              (data (i32.const 1024) "line\n")
              (data (i32.const 2047) "\01")
              (func $line (param $n i32)
                (local $frame i32)
                (local.set $frame (i32.sub (global.get $sp) (i32.const 16)))
                (global.set $sp (local.get $frame))
                (i32.store (local.get $frame) (i32.const 1024))
                (i32.store offset=4 (local.get $frame) (i32.const 5))
                (drop (call $write (i32.const 1) (local.get $frame) (i32.const 1) (i32.add (local.get $frame) (i32.const 8))))
                (global.set $sp (i32.add (local.get $frame) (i32.const 16))))
              (func (export "_start")
                (local $i i32)
                (loop $again
                  (call $line (local.get $i))
                  (local.set $i (i32.add (local.get $i) (i32.const 1)))
                  (br_if $again (i32.lt_u (local.get $i) (i32.const 3))))
                (call $exit (i32.sub (i32.const 1) (i32.load8_u (i32.const 2047)))))
            """#)
        let (exit, console) = try runConsoleGuest(bytes, suspendAtEveryBlock: true)
        XCTAssertEqual(exit, 0, "the data below the stack was overwritten")
        XCTAssertEqual(console, "line\nline\nline\n")
    }

    /// The engine, WASI argv and console output against the same C built natively, with the
    /// guest suspended at every suspension point its preparation put in its loops (it makes no
    /// host call while it computes: without them it could not be suspended until it printed).
    func testCPUGuestMatchesNativeBuild() throws {
        let printed = FileManager.default.temporaryDirectory.appendingPathComponent("native-cpu-\(UUID().uuidString).out")
        defer { try? FileManager.default.removeItem(at: printed) }
        // A tenth of the benchmark's work: seconds, not minutes, in the interpreter.
        let native = try SpawnedProcess(
            Fixtures.guests.appendingPathComponent("native/cpu").path, ["1"], stdout: .file(printed.path))
        let deadline = Date().addingTimeInterval(60)
        while native.isRunning && Date() < deadline { usleep(10_000) }
        if native.isRunning {
            native.signal(SIGKILL)
            return XCTFail("native cpu did not finish within 60 s")
        }
        let expected = try Data(contentsOf: printed)

        let world = ScriptedWorld(incoming: [], suspension: SuspensionRequest())
        let machine = try Machine(
            prepared: try Fixtures.guest("cpu"), world: world, suspension: world.suspension,
            configuration: MachineConfiguration(arguments: ["cpu", "1"], listenerCount: 0))
        var suspensions = 0
        machine.onSuspended = { _ in
            suspensions += 1
            world.suspension.request()
        }
        world.suspension.request()
        XCTAssertEqual(try machine.run(), 0)
        XCTAssertGreaterThan(suspensions, 100, "the computing guest was not suspended while it computed")
        XCTAssertEqual(String(decoding: world.consoleOutput, as: UTF8.self), String(decoding: expected, as: UTF8.self))
        XCTAssertTrue(String(decoding: expected, as: UTF8.self).hasPrefix("cpu: result="))
    }

    /// Suspending at waits (unwinding the whole stack into memory and rewinding it) must not
    /// change what the guest does: echo's output equals its input across many suspensions.
    func testEchoSurvivesSuspensionAtEveryOtherWait() throws {
        let lines = (0..<200).map { "line \($0) " + String(repeating: "x", count: $0 % 37) + "\n" }
        let input = Array(lines.joined().utf8)
        let chunks = stride(from: 0, to: input.count, by: 97).map { Array(input[$0..<min($0 + 97, input.count)]) }
        let world = ScriptedWorld(incoming: chunks, interruptEvery: 2, suspension: SuspensionRequest())
        let suspensions = try machine("echo", world).runScripted(world)
        XCTAssertEqual(String(decoding: world.sent, as: UTF8.self), lines.joined())
        XCTAssertGreaterThan(suspensions, 20)
    }

    func testKVAnswersPipelinedRESPThroughSuspensions() throws {
        let request = "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n*2\r\n$4\r\nINCR\r\n$1\r\nn\r\n*2\r\n$4\r\nINCR\r\n$1\r\nn\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
        let world = ScriptedWorld(
            incoming: Array(request.utf8).map { [$0] }, interruptEvery: 3, suspension: SuspensionRequest())
        _ = try machine("kv", world).runScripted(world)
        XCTAssertEqual(String(decoding: world.sent, as: UTF8.self), "+OK\r\n:1\r\n:2\r\n$5\r\nhello\r\n")
    }

    /// The unwind buffer must never share memory with the guest's heap: fill kv's heap far past
    /// its initial memory while suspending at every other wait, then read every value back.
    func testHeapGrowthAcrossSuspensionsLosesNothing() throws {
        let count = 2_000
        let value = { (index: Int) in String(repeating: Character(UnicodeScalar(UInt8(97 + index % 26))), count: 300) + "\(index)" }
        var script = ""
        for index in 0..<count {
            let key = "key:\(index)"
            let data = value(index)
            script += "*3\r\n$3\r\nSET\r\n$\(key.utf8.count)\r\n\(key)\r\n$\(data.utf8.count)\r\n\(data)\r\n"
        }
        var expected = String(repeating: "+OK\r\n", count: count)
        for index in stride(from: 0, to: count, by: 7) {
            let key = "key:\(index)"
            script += "*2\r\n$3\r\nGET\r\n$\(key.utf8.count)\r\n\(key)\r\n"
            expected += "$\(value(index).utf8.count)\r\n\(value(index))\r\n"
        }
        let bytes = Array(script.utf8)
        let chunks = stride(from: 0, to: bytes.count, by: 4_096).map { Array(bytes[$0..<min($0 + 4_096, bytes.count)]) }
        let world = ScriptedWorld(incoming: chunks, interruptEvery: 2, suspension: SuspensionRequest())
        let suspensions = try machine("kv", world).runScripted(world)
        XCTAssertGreaterThan(suspensions, 50)
        XCTAssertEqual(world.sent.count, expected.utf8.count)
        XCTAssertTrue(String(decoding: world.sent, as: UTF8.self) == expected, "replies differ after heap growth")
    }

    /// A machine restored from a captured state in a fresh instance, on the other engine,
    /// continues where the first one stopped: the keys written before the capture are read back
    /// through a new world.
    func testRestoredMachineKeepsServing() throws {
        func command(_ words: String...) -> String {
            "*\(words.count)\r\n" + words.map { "$\($0.utf8.count)\r\n\($0)\r\n" }.joined()
        }
        let writes = (0..<300).map { command("SET", "key:\($0)", "value-\($0)") }.joined() + command("INCRBY", "n", "41")
        let first = ScriptedWorld(incoming: [Array(writes.utf8)], interruptEvery: 2, suspension: SuspensionRequest())
        let original = try machine("kv", first)
        var saved: MachineState?
        original.onSuspended = { machine in
            guard first.finished else { return }
            saved = try machine.captureState()
            throw ScriptedWorld.Finished()
        }
        XCTAssertThrowsError(try original.run())
        let state = try XCTUnwrap(saved)
        XCTAssertTrue(String(decoding: first.sent, as: UTF8.self).hasSuffix("+OK\r\n:41\r\n"))

        let reads = command("GET", "key:0") + command("GET", "key:299") + command("INCR", "n") + command("DBSIZE")
        let second = ScriptedWorld(incoming: [Array(reads.utf8)], connection: .init(50), suspension: SuspensionRequest())
        let restored = try Machine(
            restoring: state, prepared: try Fixtures.guest("kv"), world: second, suspension: second.suspension,
            configuration: MachineConfiguration(arguments: ["kv"], listenerCount: 1, engine: Fixtures.otherEngine))
        _ = try restored.runScripted(second)
        XCTAssertEqual(
            String(decoding: second.sent, as: UTF8.self), "$7\r\nvalue-0\r\n$9\r\nvalue-299\r\n:42\r\n:301\r\n")
    }

    /// Both trackers on one workload: every page the hashing tracker (the fallback, which reads
    /// all memory) finds changed between two suspensions, the kernel's write-protect tracker
    /// reports too. The kernel may add pages written with the bytes they already held; it must
    /// not simply report everything.
    func testKernelAndHashingTrackersAgreeOnChangedPages() throws {
        let kernel = try UserfaultDirtyTracker()
        var hashing = HashingDirtyTracker()
        let world = ScriptedWorld(
            incoming: Fixtures.setCommands(count: 1_500, valueBytes: 64, chunk: 2_048), interruptEvery: 2, suspension: SuspensionRequest())
        let machine = try machine("kv", world)
        var changedTotal = 0
        var reportedTotal = 0
        var pagesTotal = 0
        var rounds = 0
        var misses: [String] = []
        machine.onSuspended = { machine in
            if world.finished { throw ScriptedWorld.Finished() }
            let (reported, changed, pages) = try machine.withLinearMemory { memory in
                (Set(try kernel.dirtyPages(of: memory)), hashing.dirtyPages(of: memory), memory.count / 4_096)
            }
            rounds += 1
            guard rounds > 1 else { return }  // both report every page the first time
            misses += changed.filter { !reported.contains($0) }.map { "page \($0) in round \(rounds)" }
            changedTotal += changed.count
            reportedTotal += reported.count
            pagesTotal += pages
        }
        XCTAssertThrowsError(try machine.run())
        XCTAssertEqual(misses, [], "changed pages the kernel did not report")
        XCTAssertGreaterThan(rounds, 10)
        XCTAssertGreaterThan(changedTotal, 0)
        XCTAssertGreaterThanOrEqual(reportedTotal, changedTotal)
        XCTAssertLessThan(reportedTotal, pagesTotal / 2, "the tracker must not simply report everything")
    }

    /// Every clock reading and random byte comes from the world: the same world gives the same
    /// machine, a different entropy source a different one.
    func testClockAndEntropyComeOnlyFromTheWorld() throws {
        func transcript(seed: UInt8) throws -> String {
            let world = ScriptedWorld(
                incoming: [Array("a\nb\nSTATE\n".utf8)], randomSeed: seed, suspension: SuspensionRequest())
            _ = try machine("clocky", world).runScripted(world)
            return String(decoding: world.sent, as: UTF8.self)
        }
        let first = try transcript(seed: 3)
        XCTAssertEqual(first.split(separator: "\n").count, 3, first)
        XCTAssertEqual(first, try transcript(seed: 3))
        XCTAssertNotEqual(first, try transcript(seed: 4))
    }

    /// The pause each suspension costs the guest is counted and exported as a metric. (The only
    /// test that bootstraps the metrics system: a process may do it once.)
    func testSuspensionPausesAreCountedAndExportedAsAMetric() throws {
        let metrics = TestMetrics()
        MetricsSystem.bootstrap(metrics)
        let world = ScriptedWorld(incoming: [Array("ping\n".utf8)], interruptEvery: 2, suspension: SuspensionRequest())
        let machine = try machine("echo", world)
        let suspensions = try machine.runScripted(world)
        XCTAssertEqual(machine.statistics.count, suspensions)
        XCTAssertGreaterThan(machine.statistics.count, 0)
        XCTAssertGreaterThan(machine.statistics.totalPauseNanos, 0)
        let timer = try metrics.expectTimer("understudy_suspension_pause")
        XCTAssertEqual(timer.values.count, suspensions)
        XCTAssertEqual(UInt64(timer.values.max() ?? 0), machine.statistics.maxPauseNanos)
    }
}
