import Metrics
import UnderstudyCore

public struct MachineConfiguration: Sendable {
    /// argv as the guest sees it, argv[0] included.
    public var arguments: [String]
    public var environment: [String]
    public var listenerCount: Int
    /// Unwind at every host call that may block, not only when a suspension is requested.
    /// Kept to measure what suspension costs (`make bench`); the default is the cheaper policy.
    public var suspendAtEveryBlock: Bool
    /// The Asyncify buffer holds the locals of the guest's unwound call chain (not its shadow
    /// stack, which stays in place): a few hundred bytes for the C servers here.
    public var unwindBufferBytes: UInt32
    /// The most linear memory the guest may have, like a VM's RAM size: a `memory.grow` past it
    /// fails (the guest's malloc returns NULL), a module whose initial memory exceeds it is
    /// refused. It also bounds what a checkpoint of this machine can weigh on the wire.
    public var memoryLimitBytes: UInt64
    /// What runs the guest's code. Not part of the machine's state: either engine restores what
    /// the other saved.
    public var engine: GuestEngineKind

    public static let pageBytes: UInt64 = 65_536
    /// All that wasm32 can address.
    public static let largestMemoryLimit: UInt64 = 1 << 32
    public static let defaultMemoryLimit: UInt64 = 1 << 30

    public init(
        arguments: [String], environment: [String] = [], listenerCount: Int,
        suspendAtEveryBlock: Bool = false, unwindBufferBytes: UInt32 = 16_384, memoryLimitBytes: UInt64 = defaultMemoryLimit,
        engine: GuestEngineKind = .preferred
    ) {
        self.arguments = arguments
        self.environment = environment
        self.listenerCount = listenerCount
        self.suspendAtEveryBlock = suspendAtEveryBlock
        self.unwindBufferBytes = unwindBufferBytes
        self.memoryLimitBytes = memoryLimitBytes
        self.engine = engine
    }

    /// Why `bytes` cannot be a machine's memory limit, or nil.
    public static func problem(withMemoryLimit bytes: UInt64) -> String? {
        guard bytes >= pageBytes, bytes <= largestMemoryLimit, bytes % pageBytes == 0 else {
            return "a memory limit is a whole number of 64 KiB pages between 64 KiB and 4 GiB, not \(bytes) bytes"
        }
        return nil
    }
}

public struct SuspensionStatistics: Sendable {
    public var count = 0
    /// Suspend → handled → resumed, as the guest experiences it.
    public var totalPauseNanos: UInt64 = 0
    public var maxPauseNanos: UInt64 = 0
}

/// A running guest with its devices. Confined to the thread that calls `run()`: the engines'
/// objects are not Sendable, so only values (state, statistics) ever leave it.
public final class Machine {
    public let configuration: MachineConfiguration
    public let prepared: PreparedModule
    private let instance: any GuestInstance
    private let host: WASIHost
    private let asyncify: AsyncifyController
    private let suspension: SuspensionRequest
    /// Every exported global, sorted by name: looked up once, read at every checkpoint (in the pause).
    private let exportedGlobals: [GuestGlobal]
    private let globalsByName: [String: GuestGlobal]
    private var unwindStartedAt: ContinuousClock.Instant?
    /// Set while the guest's stack is unwound in memory and `run()` must rewind, not start.
    private var resumesSuspendedGuest = false
    /// True only inside `onSuspended`, when memory and globals are a consistent whole.
    private var isSuspended = false
    public private(set) var statistics = SuspensionStatistics()
    /// The same pauses, for whatever metrics backend the process bootstrapped (issue 4: Prometheus).
    private let pauseTimer = Metrics.Timer(label: "understudy_suspension_pause")

    /// Runs with the guest suspended (its stack unwound into memory): the point where a
    /// checkpoint reads the machine state.
    public var onSuspended: ((Machine) throws -> Void)?

    public init(
        prepared: PreparedModule, world: MachineWorld, suspension: SuspensionRequest, configuration: MachineConfiguration
    ) throws(MachineError) {
        self.configuration = configuration
        self.prepared = prepared
        self.suspension = suspension
        if let problem = MachineConfiguration.problem(withMemoryLimit: configuration.memoryLimitBytes) { throw .instantiation(problem) }
        host = WASIHost(
            world: world, listenerCount: configuration.listenerCount,
            arguments: configuration.arguments, environment: configuration.environment)
        instance = try GuestEngines.instantiate(
            prepared, on: configuration.engine, hostFunctions: host.hostFunctions(), memoryLimitBytes: configuration.memoryLimitBytes)
        exportedGlobals = instance.globals.sorted { $0.name < $1.name }
        globalsByName = Dictionary(instance.globals.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        let view = GuestMemoryView(instance: instance)
        host.installedMemory = view
        asyncify = try AsyncifyController(instance: instance, memory: view, dataSize: configuration.unwindBufferBytes)
        host.suspension = self
    }

    /// Runs the guest until it exits; returns its exit code.
    public func run() throws(MachineError) -> Int32 {
        guard let start = instance.function("_start") else { throw .instantiation("the guest exports no _start") }
        while true {
            do {
                if resumesSuspendedGuest {
                    resumesSuspendedGuest = false
                    try asyncify.startRewind()
                }
                try start.invoke([])
            } catch let exit as GuestExit {
                return Int32(bitPattern: exit.code)
            } catch let error as MachineError {
                throw error
            } catch {
                throw .trapped(Self.reason(error))
            }
            guard asyncify.state == .unwinding else { return 0 }
            do {
                try asyncify.stopUnwind()
                isSuspended = true
                defer { isSuspended = false }
                // Cleared first: a request made while this suspension is handled (a pre-copy
                // finishing, a timer) is for the next one and must not be lost.
                suspension.clear()
                try onSuspended?(self)
                try asyncify.startRewind()
            } catch let error as MachineError {
                throw error
            } catch {
                throw .suspension("\(error)")
            }
        }
    }

    private static func reason(_ error: Error) -> String {
        if let exit = error as? GuestExit { return "exit \(exit.code)" }
        return "\(error)"
    }

    /// The guest is not running: suspended, or restored and not yet resumed.
    private var isStill: Bool { isSuspended || resumesSuspendedGuest }

    /// The guest's linear memory in place, for a dirty tracker. Only while the guest is still
    /// (suspended, or restored and not yet run).
    public func withLinearMemory<T>(_ body: (UnsafeRawBufferPointer) throws -> T) rethrows -> T {
        precondition(isStill, "linear memory read while the guest runs")
        return try instance.withMemory { try body(UnsafeRawBufferPointer($0)) }
    }

    /// The guest's linear memory, writable: an active-mode sync repairs blocks in place. Only
    /// while the guest is still.
    public func withMutableLinearMemory<T>(_ body: (UnsafeMutableRawBufferPointer) throws -> T) rethrows -> T {
        precondition(isStill, "linear memory written while the guest runs")
        return try instance.withMemory(body)
    }

    /// Replaces globals and devices with `state`'s (its memory is not read), growing memory to
    /// `memoryBytes` if it is smaller: a sync that found them diverged. Only while suspended.
    public func adoptStateExceptMemory(_ state: MachineState, memoryBytes: Int) throws(MachineError) {
        guard isSuspended else { throw .suspension("state can only be replaced while the guest is suspended") }
        try adoptGlobals(state.globals, memoryBytes: memoryBytes)
        host.descriptors = state.descriptors
        asyncify.adoptUnwoundStack(at: state.unwindDataAddress, stack: state.unwoundStack)
    }

    /// The machine's complete state. Only while suspended: from `onSuspended`.
    public func captureState() throws(MachineError) -> MachineState {
        var state = try captureStateExceptMemory()
        state.memory = instance.withMemory { Array($0) }
        return state
    }

    /// Globals and devices, with `memory` left empty: a checkpoint copies only the pages it needs
    /// straight out of `withLinearMemory`. Only while suspended.
    public func captureStateExceptMemory() throws(MachineError) -> MachineState {
        guard isSuspended else { throw .suspension("state can only be captured while the guest is suspended") }
        let globals = exportedGlobals.compactMap { $0.read() }
        return MachineState(
            memory: [], globals: globals, descriptors: host.descriptors, unwindDataAddress: asyncify.dataAddress,
            unwoundStack: asyncify.unwoundStack)
    }

    /// A fresh machine that continues exactly where `state` was captured: `run()` rewinds the
    /// guest's saved stack instead of calling `_start` anew.
    public convenience init(
        restoring state: MachineState, prepared: PreparedModule, world: MachineWorld, suspension: SuspensionRequest,
        configuration: MachineConfiguration
    ) throws(MachineError) {
        try self.init(prepared: prepared, world: world, suspension: suspension, configuration: configuration)
        try restore(state)
    }

    private func restore(_ state: MachineState) throws(MachineError) {
        try adoptGlobals(state.globals, memoryBytes: state.memory.count)
        state.memory.withUnsafeBytes { saved in
            instance.withMemory { UnsafeMutableRawBufferPointer(rebasing: $0[0..<saved.count]).copyMemory(from: saved) }
        }
        host.descriptors = state.descriptors
        asyncify.adoptUnwoundStack(at: state.unwindDataAddress, stack: state.unwoundStack)
        resumesSuspendedGuest = true
    }

    /// Grows memory to `memoryBytes` and sets every global to its saved value.
    private func adoptGlobals(_ globals: [MachineState.GlobalState], memoryBytes: Int) throws(MachineError) {
        let pageSize = 65_536
        let byteCount = instance.memoryByteCount
        guard memoryBytes % pageSize == 0, memoryBytes >= byteCount else {
            throw .instantiation("the saved memory (\(memoryBytes) bytes) does not fit this machine's \(byteCount)")
        }
        let missingPages = (memoryBytes - byteCount) / pageSize
        if missingPages > 0 { _ = try instance.growMemory(by: UInt32(missingPages)) }
        for global in globals {
            guard let target = globalsByName[global.name] else {
                throw MachineError.instantiation("the saved global \(global.name) is not in this module")
            }
            if target.read() != global { try target.write(global) }
        }
    }
}

extension Machine: HostCallSuspension {
    func enterHostCall(mayBlock: Bool) throws -> Bool {
        if asyncify.state == .rewinding {
            try asyncify.stopRewind()
            recordPause()
            return false
        }
        let recordedHere = host.world.hostCallEntered()
        if recordedHere || suspension.isPending || (mayBlock && configuration.suspendAtEveryBlock) {
            try beginUnwind()
            return true
        }
        return false
    }

    func suspendInsideWait() throws {
        try beginUnwind()
    }

    private func beginUnwind() throws {
        unwindStartedAt = ContinuousClock.now
        host.world.guestWillSuspend()
        try asyncify.startUnwind()
    }

    private func recordPause() {
        guard let began = unwindStartedAt else { return }
        unwindStartedAt = nil
        let (seconds, attoseconds) = (ContinuousClock.now - began).components
        let nanos = UInt64(seconds) * 1_000_000_000 + UInt64(attoseconds / 1_000_000_000)
        statistics.count += 1
        statistics.totalPauseNanos += nanos
        statistics.maxPauseNanos = max(statistics.maxPauseNanos, nanos)
        pauseTimer.recordNanoseconds(Int64(clamping: nanos))
    }
}
