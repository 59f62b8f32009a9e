import Foundation
import UnderstudyCore
import XCTest

@testable import UnderstudyMachine

/// Locates the guests `make guests` built, and prepares them once per test process.
enum Fixtures {
    static let guests: URL = {
        if let path = ProcessInfo.processInfo.environment["UNDERSTUDY_GUESTS"] { return URL(fileURLWithPath: path) }
        return URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("guests/build")
    }()

    static let cache = FileManager.default.temporaryDirectory.appendingPathComponent("understudy-test-cache")

    static func preparer() -> ModulePreparer { ModulePreparer(cacheDirectory: cache) }

    /// The engine a test's machines run on (`UNDERSTUDY_ENGINE`: `make test` runs the suite on
    /// each), and the one a checkpoint taken there is restored and replayed on.
    static let engine = GuestEngineKind.preferred
    static var otherEngine: GuestEngineKind { engine == .wasmkit ? .wasmtime : .wasmkit }

    /// `count` RESP SETs of `k0`, `k1`, … to values of `valueBytes` "v"s, cut into chunks of `chunk`
    /// bytes as a client's segments would arrive.
    static func setCommands(count: Int, valueBytes: Int, chunk: Int) -> [[UInt8]] {
        var script = ""
        for index in 0..<count {
            script += "*3\r\n$3\r\nSET\r\n$\("k\(index)".utf8.count)\r\nk\(index)\r\n$\(valueBytes)\r\n\(String(repeating: "v", count: valueBytes))\r\n"
        }
        let bytes = Array(script.utf8)
        return stride(from: 0, to: bytes.count, by: chunk).map { Array(bytes[$0..<min($0 + chunk, bytes.count)]) }
    }

    static func guest(_ name: String) throws -> PreparedModule {
        let path = guests.appendingPathComponent("\(name).wasm").path
        guard FileManager.default.fileExists(atPath: path) else { throw MissingGuest(path: path) }
        return try preparer().prepare(path: path)
    }
}

/// A test that needs a guest fails (never skips) when it is missing, saying how to build it.
struct MissingGuest: Error, CustomStringConvertible {
    let path: String
    var description: String { "\(path) is not built: run `make guests` (make test does)" }
}

/// A world whose every answer the test decides: one listener, one client connection that
/// delivers `incoming` in chunks, then end of file. It interrupts every `interruptEvery`-th wait
/// (a checkpoint falling due) and stops the machine once it has nothing left to give.
final class ScriptedWorld: MachineWorld {
    struct Finished: Error {}

    let suspension: SuspensionRequest
    var incoming: [[UInt8]]
    var sent: [UInt8] = []
    var consoleOutput: [UInt8] = []
    var clock: UInt64 = 1_700_000_000_000_000_000
    var randomSeed: UInt8
    let interruptEvery: Int
    /// The identity this world gives its one client; a restored guest may still hold others.
    let connection: ConnectionID
    private var accepted = false
    private var closed = false
    private var polls = 0
    private(set) var finished = false

    init(
        incoming: [[UInt8]], interruptEvery: Int = 0, randomSeed: UInt8 = 7, connection: ConnectionID = .init(1),
        suspension: SuspensionRequest
    ) {
        self.incoming = incoming
        self.connection = connection
        self.interruptEvery = interruptEvery
        self.randomSeed = randomSeed
        self.suspension = suspension
    }

    func clockNow(_ clock: WorldClock) -> UInt64 {
        self.clock += 1_000_003
        return self.clock
    }

    func randomBytes(into buffer: UnsafeMutableRawBufferPointer) {
        for index in buffer.indices {
            randomSeed = randomSeed &* 37 &+ 11
            buffer[index] = randomSeed
        }
    }

    func accept(listener: ListenerID) -> WorldResult<ConnectionID> {
        if accepted { return .wouldBlock }
        accepted = true
        return .done(connection)
    }

    func receive(connection: ConnectionID, into buffer: UnsafeMutableRawBufferPointer) -> WorldResult<Int> {
        guard connection == self.connection else { return .failed(errno: 9) }
        guard !incoming.isEmpty else { return .done(0) }
        let chunk = incoming.removeFirst()
        let count = min(chunk.count, buffer.count)
        buffer.copyBytes(from: chunk[0..<count])
        if count < chunk.count { incoming.insert(Array(chunk[count...]), at: 0) }
        return .done(count)
    }

    func send(connection: ConnectionID, bytes: UnsafeRawBufferPointer) -> WorldResult<Int> {
        guard connection == self.connection else { return .failed(errno: 9) }
        sent.append(contentsOf: bytes)
        return .done(bytes.count)
    }

    func shutdown(connection: ConnectionID, reading: Bool, writing: Bool) {}
    func close(connection: ConnectionID) {
        if connection == self.connection { closed = true }
    }
    func close(listener: ListenerID) {}

    func poll(_ interests: [PollInterest], timeoutNanos: UInt64?) -> PollOutcome {
        polls += 1
        if interruptEvery > 0 && polls % interruptEvery == 0 {
            suspension.request()
            return .interrupted
        }
        var ready: [PollReadiness] = []
        for (index, interest) in interests.enumerated() {
            switch interest.target {
            case .listener:
                if !accepted && interest.readable { ready.append(.init(interest: index, readable: true, writable: false, hangup: false)) }
            case .connection(let id) where id != connection:
                ready.append(.init(interest: index, readable: interest.readable, writable: false, hangup: true))
            case .connection:
                if !closed {
                    ready.append(.init(interest: index, readable: interest.readable, writable: interest.writable, hangup: false))
                }
            }
        }
        if ready.isEmpty {
            // A guest with a timer (clocky) keeps polling with timeouts; once its client is gone
            // there is nothing more to see.
            if timeoutNanos != nil && !(accepted && closed) { return .timedOut }
            finished = true
            suspension.request()
            return .interrupted
        }
        return .ready(ready)
    }

    func console(_ stream: ConsoleStream, bytes: UnsafeRawBufferPointer) {
        consoleOutput.append(contentsOf: bytes)
    }
}

extension Machine {
    /// Runs until the scripted world has nothing left; returns how many times the guest was
    /// suspended and resumed on the way.
    func runScripted(_ world: ScriptedWorld) throws -> Int {
        var suspensions = 0
        onSuspended = { _ in
            if world.finished { throw ScriptedWorld.Finished() }
            suspensions += 1
        }
        do {
            _ = try run()
            XCTFail("the guest exited on its own")
        } catch .suspension(let reason) where reason.contains("Finished") {
        }
        return suspensions
    }
}
