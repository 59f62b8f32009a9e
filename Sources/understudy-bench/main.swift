// `understudy-bench`: the checkpoint measurements `make bench` reports (scripts/bench.py reads
// the JSON lines this prints). It drives the real parts in-process: the `pagetouch` guest in a
// Machine, recorded by a RecordingSession with either dirty tracker, then restored from its
// directory; and the two trackers alone on plain memory. (Replay speed is measured by
// scripts/bench.py on a kv recording made under redis-benchmark.)
//
//   understudy-bench GUESTS_DIR [--sizes 16,64,256,1024] [--dirty 100,1000,10000] [--rounds 20]
import Foundation
import UnderstudyCheckpoint
import UnderstudyCore
import UnderstudyMachine

/// The benchmark's outside world: asks for a suspension at every clock reading (the end of a
/// pagetouch round) and otherwise has nothing to offer. Each reading first waits `interval`, as
/// if the guest ran that long between checkpoints: the writer queue then finishes the previous
/// checkpoint's file, as it would at a real epoch, instead of competing with the next pause for
/// the two cores.
final class RoundWorld: MachineWorld {
    let suspension: SuspensionRequest
    let interval: UInt32
    var clock: UInt64 = 0
    init(suspension: SuspensionRequest, intervalMicros: UInt32 = 25_000) {
        self.suspension = suspension
        interval = intervalMicros
    }
    func clockNow(_ clock: WorldClock) -> UInt64 {
        usleep(interval)
        suspension.request()
        self.clock += 1_000_000
        return self.clock
    }
    func randomBytes(into buffer: UnsafeMutableRawBufferPointer) { buffer.initializeMemory(as: UInt8.self, repeating: 4) }
    func accept(listener: ListenerID) -> WorldResult<ConnectionID> { .wouldBlock }
    func receive(connection: ConnectionID, into buffer: UnsafeMutableRawBufferPointer) -> WorldResult<Int> { .failed(errno: 9) }
    func send(connection: ConnectionID, bytes: UnsafeRawBufferPointer) -> WorldResult<Int> { .failed(errno: 9) }
    func shutdown(connection: ConnectionID, reading: Bool, writing: Bool) {}
    func close(connection: ConnectionID) {}
    func close(listener: ListenerID) {}
    func poll(_ interests: [PollInterest], timeoutNanos: UInt64?) -> PollOutcome { .timedOut }
    func console(_ stream: ConsoleStream, bytes: UnsafeRawBufferPointer) {}
}

func nanos(_ duration: Duration) -> Double {
    Double(duration.components.seconds) * 1e9 + Double(duration.components.attoseconds) / 1e9
}

func percentile(_ values: [Double], _ fraction: Double) -> Double {
    guard !values.isEmpty else { return .nan }
    let sorted = values.sorted()
    return sorted[min(sorted.count - 1, Int((Double(sorted.count - 1) * fraction).rounded()))]
}

func emit(_ fields: [String: Any]) {
    let data = try! JSONSerialization.data(withJSONObject: fields, options: [.sortedKeys])
    FileHandle.standardOutput.write(data + Data("\n".utf8))
}

func progress(_ message: String) {
    FileHandle.standardError.write(Data("[understudy-bench] \(message)\n".utf8))
}

/// Records `pagetouch` once; returns the pauses the guest saw and the capture times.
func checkpointRun(module: URL, prepared: PreparedModule, mib: Int, dirty: Int, rounds: Int, kernel: Bool) throws {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("understudy-bench-\(UUID().uuidString)")
    defer { try? FileManager.default.removeItem(at: directory) }
    let suspension = SuspensionRequest()
    let arguments = ["pagetouch", "\(mib)", "\(dirty)", "\(rounds)"]
    // Memories up to 1 GiB of pages, plus the guest's own: past the default limit.
    let configuration = MachineConfiguration(arguments: arguments, listenerCount: 0, memoryLimitBytes: MachineConfiguration.largestMemoryLimit)
    let session = try RecordingSession(
        directory: directory, module: module, manifest: RecordingManifest(moduleHash: prepared.hash, configuration: configuration),
        recording: RoundWorld(suspension: suspension), kernelTracking: kernel)
    let machine = try Machine(prepared: prepared, world: session.world, suspension: suspension, configuration: configuration)
    session.attach(to: machine)
    var captures: [Double] = []
    var pages: [Int] = []
    session.onCheckpoint = { taken in
        guard taken.sequence > 1 else { return }  // the first is full
        captures.append(Double(taken.captureNanos))
        pages.append(taken.pages)
    }
    // The machine counts each pause when the guest resumes: the difference between two
    // suspensions is the previous one's pause.
    var pauses: [Double] = []
    var lastTotal: UInt64 = 0
    var seen = 0
    let checkpoint = machine.onSuspended
    machine.onSuspended = { machine in
        let total = machine.statistics.totalPauseNanos
        if seen >= 2 { pauses.append(Double(total - lastTotal)) }
        lastTotal = total
        seen += 1
        try checkpoint?(machine)
    }
    let code = try machine.run()
    try session.finish()
    guard code == 0 else { throw MachineError.trapped("pagetouch exited with \(code)") }

    // Restore: read and apply every checkpoint, build a fresh machine from the state.
    let restoreBegan = ContinuousClock.now
    let (_, state, _) = try CheckpointDirectory(directory).state(moduleHash: prepared.hash)
    _ = try Machine(
        restoring: state, prepared: prepared, world: RoundWorld(suspension: SuspensionRequest()), suspension: SuspensionRequest(),
        configuration: MachineConfiguration(arguments: arguments, listenerCount: 0, memoryLimitBytes: MachineConfiguration.largestMemoryLimit))
    let restore = nanos(ContinuousClock.now - restoreBegan)
    let checkpointBytes = try FileManager.default.contentsOfDirectory(atPath: directory.path).filter { $0.hasSuffix(".ckpt") }
        .map { try FileManager.default.attributesOfItem(atPath: directory.appendingPathComponent($0).path)[.size] as? Int ?? 0 }
        .reduce(0, +)

    emit([
        "kind": "checkpoint", "tracker": kernel ? "userfaultfd" : "hashing", "memoryMiB": mib, "dirtyPages": dirty,
        "memoryBytes": state.memory.count, "checkpoints": captures.count, "pagesMedian": percentile(pages.map(Double.init), 0.5),
        "pauseMedianMicros": percentile(pauses, 0.5) / 1000, "pauseP99Micros": percentile(pauses, 0.99) / 1000,
        "captureMedianMicros": percentile(captures, 0.5) / 1000, "restoreMillis": restore / 1e6,
        "checkpointBytes": checkpointBytes,
    ])
}

/// The trackers alone on an anonymous mapping: how long finding `dirty` written pages takes.
func scanCost(mib: Int, dirty: Int, rounds: Int) throws {
    let bytes = mib << 20
    guard let base = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), base != MAP_FAILED else {
        throw MachineError.instantiation("cannot map \(mib) MiB")
    }
    defer { munmap(base, bytes) }
    let memory = UnsafeMutableRawBufferPointer(start: base, count: bytes)
    memory.initializeMemory(as: UInt8.self, repeating: 1)
    let kernel = try UserfaultDirtyTracker()
    var hashing = HashingDirtyTracker()
    _ = try kernel.dirtyPages(of: UnsafeRawBufferPointer(memory))
    _ = hashing.dirtyPages(of: UnsafeRawBufferPointer(memory))
    var kernelTimes: [Double] = []
    var hashingTimes: [Double] = []
    let pages = bytes / 4096
    for round in 0..<rounds {
        for index in 0..<dirty { memory[((round * dirty + index) % pages) * 4096 + round] &+= 1 }
        var began = ContinuousClock.now
        let found = try kernel.dirtyPages(of: UnsafeRawBufferPointer(memory))
        kernelTimes.append(nanos(ContinuousClock.now - began))
        began = ContinuousClock.now
        let hashed = hashing.dirtyPages(of: UnsafeRawBufferPointer(memory))
        hashingTimes.append(nanos(ContinuousClock.now - began))
        precondition(Set(hashed).isSubset(of: Set(found)), "the kernel missed a page the hashing tracker found")
    }
    emit([
        "kind": "scan", "memoryMiB": mib, "dirtyPages": dirty, "userfaultfdMedianMicros": percentile(kernelTimes, 0.5) / 1000,
        "hashingMedianMicros": percentile(hashingTimes, 0.5) / 1000,
    ])
}

func list(_ flag: String, _ fallback: [Int]) -> [Int] {
    let arguments = CommandLine.arguments
    guard let index = arguments.firstIndex(of: flag), index + 1 < arguments.count else { return fallback }
    return arguments[index + 1].split(separator: ",").compactMap { Int($0) }
}

let arguments = CommandLine.arguments
guard arguments.count >= 2 else {
    FileHandle.standardError.write(Data("usage: understudy-bench GUESTS_DIR [--sizes 16,64] [--dirty 100,1000] [--rounds 20]\n".utf8))
    exit(2)
}
let module = URL(fileURLWithPath: arguments[1]).appendingPathComponent("pagetouch.wasm")
let sizes = list("--sizes", [16, 64, 256, 1024])
let dirtyCounts = list("--dirty", [100, 1000, 10000])
let rounds = list("--rounds", [20]).first ?? 20
do {
    let prepared = try ModulePreparer().prepare(path: module.path)
    for mib in sizes {
        for dirty in dirtyCounts where dirty <= mib * 256 {
            progress("scan cost: \(mib) MiB, \(dirty) dirty pages")
            try scanCost(mib: mib, dirty: dirty, rounds: rounds)
            for kernel in [true, false] {
                progress("checkpoints: \(mib) MiB, \(dirty) dirty pages per round, \(kernel ? "userfaultfd" : "hashing") tracker")
                try checkpointRun(module: module, prepared: prepared, mib: mib, dirty: dirty, rounds: rounds, kernel: kernel)
            }
        }
    }
} catch {
    FileHandle.standardError.write(Data("understudy-bench: \(error)\n".utf8))
    exit(1)
}
