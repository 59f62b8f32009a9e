import UnderstudyCore
import WAT
import XCTest

@testable import UnderstudyMachine

/// The suspension points preparation puts at loop headers: a guest that
/// never calls the host is still suspended, at the same instructions on either engine.
final class SuspensionPointTests: XCTestCase {
    /// Sums 0..<500 000 through a table (`call_indirect` of a function named by an element
    /// segment and by `ref.func`, whose indices the rewrite moves) and exits with the sum: 500 000
    /// loop iterations.
    private static let loop = #"""
        (module
          (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
          (memory (export "memory") 2)
          (global $sp (export "__stack_pointer") (mut i32) (i32.const 131072))
          (global $first funcref (ref.func $add))
          (table 2 funcref)
          (elem (i32.const 0) $add $sum)
          (func $add (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))
          (func $sum (param $n i32) (result i32) (local $i i32) (local $acc i32)
            (loop $next
              (local.set $acc (call_indirect (param i32 i32) (result i32) (local.get $acc) (local.get $i) (i32.const 0)))
              (local.set $i (i32.add (local.get $i) (i32.const 1)))
              (br_if $next (i32.lt_u (local.get $i) (local.get $n))))
            (local.get $acc))
          (func (export "_start") (call $exit (call $sum (i32.const 500000)))))
        """#
    private static let sum = Int32(bitPattern: (0..<500_000).reduce(UInt32(0)) { $0 &+ UInt32($1) })
    /// With a budget of 100 000 the 100 001st, 200 001st, 300 001st and 400 001st iterations call the host.
    private static let suspensionPoints = 4

    private struct Run {
        var exit: Int32
        var suspensions = 0
        var captured: MachineState?
    }

    /// With a suspension always due, so that the machine suspends at every suspension point.
    private func run(
        _ prepared: PreparedModule, on engine: GuestEngineKind, restoring state: MachineState? = nil, capturingAt capture: Int = 0
    ) throws -> Run {
        let world = ScriptedWorld(incoming: [], suspension: SuspensionRequest())
        let configuration = MachineConfiguration(arguments: ["loop"], listenerCount: 0, engine: engine)
        let machine =
            try state.map { try Machine(restoring: $0, prepared: prepared, world: world, suspension: world.suspension, configuration: configuration) }
            ?? Machine(prepared: prepared, world: world, suspension: world.suspension, configuration: configuration)
        var run = Run(exit: 0)
        machine.onSuspended = { machine in
            run.suspensions += 1
            if run.suspensions == capture { run.captured = try machine.captureState() }
            world.suspension.request()
        }
        world.suspension.request()
        run.exit = try machine.run()
        return run
    }

    func testALoopThatNeverCallsTheHostSuspendsAtItsBudgetOnBothEngines() throws {
        let prepared = try Fixtures.preparer().prepare(bytes: try wat2wasm(Self.loop))
        for engine in [Fixtures.engine, Fixtures.otherEngine] {
            let run = try run(prepared, on: engine)
            XCTAssertEqual(run.exit, Self.sum, "\(engine): the rewrite changed what the guest computes")
            XCTAssertEqual(run.suspensions, Self.suspensionPoints, "\(engine)")
        }
    }

    /// The count is the machine's: suspended at its second point on one engine and restored on
    /// the other, the loop suspends at the two points left and computes the same sum.
    func testALoopSuspendedMidwayResumesOnTheOtherEngineAtTheSamePoints() throws {
        let prepared = try Fixtures.preparer().prepare(bytes: try wat2wasm(Self.loop))
        let first = try run(prepared, on: Fixtures.engine, capturingAt: 2)
        let state = try XCTUnwrap(first.captured)
        XCTAssertNotNil(state.globals.first { $0.name == SuspensionPoints.budgetExport }, "the budget is not part of the machine's state")
        let resumed = try run(prepared, on: Fixtures.otherEngine, restoring: state)
        XCTAssertEqual(resumed.exit, Self.sum)
        XCTAssertEqual(resumed.suspensions, Self.suspensionPoints - 2)
    }
}
