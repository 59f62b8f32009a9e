import UnderstudyCore

/// A world of several clients that arrive, send their byte streams in random pieces, and hang
/// up; every answer (partial sends, would-block, readiness, clock steps, entropy) and every
/// suspension point is drawn from one seed. Suspensions come both inside waits and as requests
/// that the machine honours at its next host call (forced unwinds). Finishes — the machine is
/// stopped at its next suspension — once every client has been served and has gone.
final class SeededTrafficWorld: MachineWorld {
    private struct Client {
        var chunks: [[UInt8]]
        var closed = false
    }

    let suspension: SuspensionRequest
    private var random: SeededGenerator
    private var arriving: [(ConnectionID, Client)]
    private var clients: [ConnectionID: Client] = [:]
    private var clock: UInt64 = 1_700_000_000_000_000_000
    private(set) var finished = false
    private(set) var replies: [ConnectionID: [UInt8]] = [:]

    init(seed: UInt64, streams: [[UInt8]], suspension: SuspensionRequest) {
        self.suspension = suspension
        random = SeededGenerator(seed: seed)
        arriving = []
        for (index, stream) in streams.enumerated() {
            var chunks: [[UInt8]] = []
            var rest = stream[...]
            while !rest.isEmpty {
                let size = min(rest.count, Int.random(in: 1...96, using: &random))
                chunks.append(Array(rest.prefix(size)))
                rest = rest.dropFirst(size)
            }
            arriving.append((ConnectionID(UInt64(100 + index)), Client(chunks: chunks)))
        }
    }

    /// Sometimes asks for a suspension the machine takes at its next host call.
    private func maybeRequestSuspension() {
        if random.chance(0.08) { suspension.request() }
    }

    /// Sometimes asks for a suspension right at this call, as a timer could fire at any host
    /// call — including those that ask the world nothing (`sched_yield`, console-only polls).
    func hostCallEntered() -> Bool {
        if random.chance(0.04) { suspension.request() }
        return false
    }

    func clockNow(_ clock: WorldClock) -> UInt64 {
        maybeRequestSuspension()
        self.clock += UInt64.random(in: 1...5_000_000, using: &random)
        return self.clock
    }

    func randomBytes(into buffer: UnsafeMutableRawBufferPointer) {
        for index in buffer.indices { buffer[index] = UInt8.random(in: 0...255, using: &random) }
    }

    func accept(listener: ListenerID) -> WorldResult<ConnectionID> {
        guard !arriving.isEmpty, !random.chance(0.1) else { return .wouldBlock }
        let (id, client) = arriving.removeFirst()
        clients[id] = client
        return .done(id)
    }

    func receive(connection: ConnectionID, into buffer: UnsafeMutableRawBufferPointer) -> WorldResult<Int> {
        maybeRequestSuspension()
        guard var client = clients[connection] else { return .failed(errno: 104) }
        if random.chance(0.1) { return .wouldBlock }
        guard !client.chunks.isEmpty else { return .done(0) }
        let chunk = client.chunks.removeFirst()
        let count = min(chunk.count, buffer.count)
        buffer.copyBytes(from: chunk[..<count])
        if count < chunk.count { client.chunks.insert(Array(chunk[count...]), at: 0) }
        clients[connection] = client
        return .done(count)
    }

    func send(connection: ConnectionID, bytes: UnsafeRawBufferPointer) -> WorldResult<Int> {
        maybeRequestSuspension()
        guard clients[connection] != nil else { return .failed(errno: 32) }
        if bytes.count > 0 && random.chance(0.1) { return .wouldBlock }
        let taken = bytes.isEmpty || random.chance(0.7) ? bytes.count : Int.random(in: 1...bytes.count, using: &random)
        replies[connection, default: []] += bytes[..<taken]
        return .done(taken)
    }

    func shutdown(connection: ConnectionID, reading: Bool, writing: Bool) {}

    func close(connection: ConnectionID) {
        clients[connection]?.closed = true
    }

    func close(listener: ListenerID) {}

    func poll(_ interests: [PollInterest], timeoutNanos: UInt64?) -> PollOutcome {
        if random.chance(0.1) {
            suspension.request()
            return .interrupted
        }
        var ready: [PollReadiness] = []
        for (index, interest) in interests.enumerated() {
            switch interest.target {
            case .listener:
                if interest.readable && !arriving.isEmpty {
                    ready.append(.init(interest: index, readable: true, writable: false, hangup: false))
                }
            case .connection(let id):
                guard let client = clients[id], !client.closed else {
                    ready.append(.init(interest: index, readable: interest.readable, writable: false, hangup: true))
                    continue
                }
                // Readable: data, or the end of the stream once it is all delivered.
                let readable = interest.readable && (random.chance(0.9) || client.chunks.isEmpty)
                let writable = interest.writable && random.chance(0.9)
                if readable || writable {
                    ready.append(.init(interest: index, readable: readable, writable: writable, hangup: false))
                }
            }
        }
        if !ready.isEmpty { return .ready(ready) }
        let served = arriving.isEmpty && clients.values.allSatisfy(\.closed)
        if served {
            finished = true
            suspension.request()
            return .interrupted
        }
        if timeoutNanos != nil { return .timedOut }
        // Something the guest waits for must become ready, or the run would never end.
        let first = interests.first.map { PollReadiness(interest: 0, readable: $0.readable, writable: $0.writable, hangup: false) }
        return first.map { .ready([$0]) } ?? .timedOut
    }

    func console(_ stream: ConsoleStream, bytes: UnsafeRawBufferPointer) {}
}
