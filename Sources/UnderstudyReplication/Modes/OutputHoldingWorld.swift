import Foundation
import Metrics
import UnderstudyCore

/// The primary's side of DESIGN.md invariant 2: wraps the live world and, while a backup protects
/// the machine, takes what the guest sends without sending it. Each output waits in an
/// `OutputCommitGate` for the position `positionOfNextOutput` names when it is made (the send's
/// own log entry in `llm`, the next epoch's checkpoint in `remus`); the backup's
/// acknowledgement, on the replication connection's thread, releases it and wakes the machine's
/// thread, which alone touches sockets and writes it out in order. Closes and shutdowns wait
/// behind the bytes sent before them. Unprotected, outputs go straight through.
///
/// The guest is told every send succeeded in full; what the host buffers is bounded
/// (`bufferLimit`), beyond which sends would block, as a full socket would.
public final class OutputHoldingWorld: MachineWorld, @unchecked Sendable {
    /// What the guest produced that clients see: bytes, and the end of a connection.
    public enum Output: Sendable {
        case bytes(ConnectionID, [UInt8])
        case shutdown(ConnectionID, reading: Bool, writing: Bool)
        case close(ConnectionID)

        var connection: ConnectionID {
            switch self {
            case .bytes(let id, _), .shutdown(let id, _, _), .close(let id): return id
            }
        }
    }

    /// An output and when it began to wait (for the hold-time metric).
    public struct Held: Sendable {
        public var output: Output
        public var since: ContinuousClock.Instant
    }

    /// State shared with the connection's thread.
    private struct Shared {
        var gate = OutputCommitGate<Held>()
        var released: [Output] = []
        var protected = false
        /// Stood down: nothing is ever released again.
        var droppingAll = false
    }

    private let inner: MachineWorld
    private let lock = NSLock()
    private var sharedState = Shared()
    private let wake = WakeSignal()
    /// Released outputs the kernel has not taken yet, per connection, in order; the first
    /// `.bytes` may be partly sent (`sentOfFirst`). The machine's thread only.
    private var outbox: [ConnectionID: [Output]] = [:]
    private var sentOfFirst: [ConnectionID: Int] = [:]
    /// Bytes held or in the outbox. The machine's thread only.
    public private(set) var bufferedBytes = 0
    public let bufferLimit: Int
    /// How long the oldest output of each acknowledgement waited (DESIGN.md: the cost of output commit).
    private let holdTimer = Metrics.Timer(label: "understudy_output_hold")
    /// The position an output made now must wait for. Set by whoever builds the stack.
    public var positionOfNextOutput: () -> UInt64 = { 0 }
    /// Called, while protected, before every wait of the guest: where an `llm` primary sends the
    /// log so far, since the backup's acknowledgement of it is what releases held output.
    public var beforeWaiting: (() -> Void)?

    public init(holding inner: MachineWorld, bufferLimit: Int = 64 << 20) {
        self.inner = inner
        self.bufferLimit = bufferLimit
    }

    /// Give it to the live world (`LiveWorld.outputWakeDescriptor`) so a wait ends when output
    /// is released.
    public var wakeDescriptor: Int32 { wake.descriptor }

    public var isProtected: Bool { withShared { $0.protected } }
    public var heldCount: Int { withShared { $0.gate.heldCount } }
    /// Since when the oldest held output has waited for the backup; nil when nothing waits.
    public var oldestHeldSince: ContinuousClock.Instant? { withShared { $0.gate.oldest?.since } }

    /// From now on outputs wait for the backup. Every position below `acknowledged` counts as
    /// acknowledged already (what the backup holds so far). Only from unprotected, with nothing
    /// held: positions may restart with a new backup (remus counts its epochs per backup).
    public func protect(acknowledgedBelow acknowledged: UInt64) {
        var gate = OutputCommitGate<Held>()
        _ = try? gate.acknowledge(below: acknowledged)  // an empty gate releases nothing
        withShared { shared in
            precondition(!shared.protected && shared.gate.heldCount == 0, "protecting a world that already holds output")
            shared.gate = gate
            shared.protected = true
        }
    }

    /// Everything held leaves now, and later output goes straight out: the primary holds the
    /// machine alone (it has won a generation alone). Any thread.
    public func unprotect() {
        withShared { shared in
            guard !shared.droppingAll else { return }
            shared.protected = false
            shared.released += shared.gate.releaseAll().map(\.output)
        }
        wake.raise()
    }

    /// The primary lost its role: what is held is dropped (the new primary produces it again),
    /// and nothing produced from now on leaves. Any thread.
    public func dropEverything() {
        withShared { shared in
            shared.gate = OutputCommitGate<Held>()
            shared.protected = true
            shared.droppingAll = true
        }
    }

    /// The backup holds every position below `position`. Any thread.
    public func acknowledge(below position: UInt64) throws(OutputCommitGate<Held>.AcknowledgementError) {
        let oldest = try withShared { shared throws(OutputCommitGate<Held>.AcknowledgementError) -> ContinuousClock.Instant? in
            guard !shared.droppingAll else { return nil }
            let now = try shared.gate.acknowledge(below: position)
            shared.released += now.map(\.output)
            return now.first?.since
        }
        guard let oldest else { return }
        wake.raise()
        holdTimer.recordNanoseconds((ContinuousClock.now - oldest).nanoseconds)
    }

    private func withShared<Result, Failure: Error>(_ body: (inout Shared) throws(Failure) -> Result) throws(Failure) -> Result {
        lock.lock()
        defer { lock.unlock() }
        return try body(&sharedState)
    }

    // MARK: Delivery (the machine's thread)

    /// The machine's thread, its guest stopped for good (a planned handover): writes out
    /// everything released, waiting for slow clients until `deadline`. True when nothing is left
    /// held or queued.
    public func deliverEverything(by deadline: ContinuousClock.Instant) -> Bool {
        while true {
            _ = wake.consume()
            deliverReleased(woken: true)
            for connection in Array(outbox.keys) { flush(connection) }
            let held = withShared { $0.gate.heldCount + $0.released.count }
            if held == 0 && outbox.isEmpty { return true }
            guard ContinuousClock.now < deadline else { return false }
            usleep(1_000)
        }
    }

    private func deliverReleased(woken: Bool = false) {
        guard woken || wake.consume() else { return }
        var released: [Output] = []
        withShared { swap(&released, &$0.released) }
        // In order, each straight to its socket unless that connection already waits in the
        // outbox: the usual reply leaves without touching the outbox at all.
        for output in released {
            let connection = output.connection
            if outbox[connection] != nil {
                outbox[connection]!.append(output)
            } else if let sent = write(output, from: 0) {
                outbox[connection] = [output]
                sentOfFirst[connection] = sent
            }
        }
    }

    /// Writes what the kernel takes of `connection`'s outbox, in order.
    private func flush(_ connection: ConnectionID) {
        guard var queue = outbox[connection] else { return }
        var sent = sentOfFirst[connection] ?? 0
        while let first = queue.first {
            if let partly = write(first, from: sent) {
                sent = partly
                break
            }
            queue.removeFirst()
            sent = 0
        }
        if queue.isEmpty {
            outbox[connection] = nil
            sentOfFirst[connection] = nil
        } else {
            outbox[connection] = queue
            sentOfFirst[connection] = sent
        }
    }

    /// Writes `output` on, its first `sent` bytes already out: nil once it is done with, else how
    /// much of it is out (the kernel took no more for now).
    private func write(_ output: Output, from sent: Int) -> Int? {
        switch output {
        case .bytes(let connection, let bytes):
            let result = bytes.withUnsafeBytes { inner.send(connection: connection, bytes: UnsafeRawBufferPointer(rebasing: $0[sent...])) }
            switch result {
            case .done(let count) where sent + count < bytes.count: return sent + count
            case .wouldBlock: return sent
            case .done, .failed:
                // A client that is gone learns nothing more; the guest learns it from its next receive.
                bufferedBytes -= bytes.count
                return nil
            }
        case .shutdown(let connection, let reading, let writing):
            inner.shutdown(connection: connection, reading: reading, writing: writing)
            return nil
        case .close(let connection):
            inner.close(connection: connection)
            return nil
        }
    }

    /// Queues `output` behind what `connection` already has waiting, or holds it for the backup.
    /// Nil when it should go straight to the inner world.
    /// `output` is only made when it is kept: unprotected output with nothing queued ahead of it
    /// goes straight out without a copy.
    private func enqueue(_ connection: ConnectionID, _ output: () -> Output) -> Bool {
        let heldBack = withShared { shared -> Bool in
            guard shared.protected else { return false }
            if let free = shared.gate.hold(Held(output: output(), since: .now), untilAcknowledged: positionOfNextOutput()) {
                shared.released.append(free.output)
                wake.raise()
            }
            return true
        }
        if heldBack { return true }
        guard outbox[connection] != nil else { return false }
        outbox[connection]!.append(output())
        flush(connection)
        return true
    }

    // MARK: MachineWorld

    public func clockNow(_ clock: WorldClock) -> UInt64 { inner.clockNow(clock) }
    public func randomBytes(into buffer: UnsafeMutableRawBufferPointer) { inner.randomBytes(into: buffer) }

    public func accept(listener: ListenerID) -> WorldResult<ConnectionID> {
        deliverReleased()
        return inner.accept(listener: listener)
    }

    public func receive(connection: ConnectionID, into buffer: UnsafeMutableRawBufferPointer) -> WorldResult<Int> {
        deliverReleased()
        return inner.receive(connection: connection, into: buffer)
    }

    public func send(connection: ConnectionID, bytes: UnsafeRawBufferPointer) -> WorldResult<Int> {
        deliverReleased()
        if bytes.isEmpty { return .done(0) }
        if bufferedBytes > 0 && bufferedBytes + bytes.count > bufferLimit { return .wouldBlock }
        bufferedBytes += bytes.count
        if enqueue(connection, { .bytes(connection, Array(bytes)) }) { return .done(bytes.count) }
        bufferedBytes -= bytes.count
        return inner.send(connection: connection, bytes: bytes)
    }

    public func shutdown(connection: ConnectionID, reading: Bool, writing: Bool) {
        deliverReleased()
        if !enqueue(connection, { .shutdown(connection, reading: reading, writing: writing) }) {
            inner.shutdown(connection: connection, reading: reading, writing: writing)
        }
    }

    public func close(connection: ConnectionID) {
        deliverReleased()
        if !enqueue(connection, { .close(connection) }) { inner.close(connection: connection) }
    }

    public func close(listener: ListenerID) { inner.close(listener: listener) }

    /// Waits for the guest's interests; a wake for released output, or a backed-up outbox
    /// becoming writable, is handled here and the wait goes on for what is left of the timeout.
    public func poll(_ interests: [PollInterest], timeoutNanos: UInt64?) -> PollOutcome {
        if let beforeWaiting, isProtected { beforeWaiting() }
        let deadline = timeoutNanos.map { inner.clockNow(.monotonic) &+ $0 }
        while true {
            // A byte left by a raise that raced with a consume would end every wait at once.
            if !wake.isRaised { wake.drain() }
            deliverReleased()
            let backedUp = outbox.keys.map { PollInterest(target: .connection($0), readable: false, writable: true) }
            var remaining = timeoutNanos
            if let deadline {
                let now = inner.clockNow(.monotonic)
                remaining = deadline > now ? deadline - now : 0
            }
            // A release that comes while the machine thread runs only sets the flag; one that
            // comes while it waits writes the pipe (`WakeSignal.willWait`).
            guard wake.willWait() else {
                wake.doneWaiting()
                continue
            }
            let outcome = inner.poll(interests + backedUp, timeoutNanos: remaining)
            wake.doneWaiting()
            guard case .ready(let readiness) = outcome else { return outcome }
            for ready in readiness where ready.interest >= interests.count {
                if case .connection(let id) = backedUp[ready.interest - interests.count].target { flush(id) }
            }
            let guests = readiness.filter { $0.interest < interests.count }
            if !guests.isEmpty { return .ready(guests) }
            if remaining == 0 { return .timedOut }
        }
    }

    public func console(_ stream: ConsoleStream, bytes: UnsafeRawBufferPointer) { inner.console(stream, bytes: bytes) }
    public func hostCallEntered() -> Bool { inner.hostCallEntered() }
    public func guestWillSuspend() { inner.guestWillSuspend() }
    public var haltReason: String? { inner.haltReason }
}
