import CUnderstudyHost
import Glibc
import UnderstudyCore

/// The real world: host clocks, the kernel's entropy, real TCP sockets. Its answers are what a
/// recording logs and what a replay reproduces.
public final class LiveWorld: MachineWorld {
    private var listeners: [Int32]
    private var connections: [ConnectionID: Int32] = [:]
    private var nextConnection: UInt64 = 1
    private let suspension: SuspensionRequest
    private let readiness: DescriptorReadiness
    /// A descriptor that, when readable, ends a wait with no readiness (`.ready([])`) so the
    /// world wrapping this one can act (deliver output the backup has just acknowledged). The
    /// wrapper drains it; -1 for none.
    public var outputWakeDescriptor: Int32 = -1

    /// Opens every listener now, so a taken port is reported before the guest starts.
    public init(listening addresses: [ServiceAddress], suspension: SuspensionRequest) throws(ListenError) {
        self.suspension = suspension
        readiness = try DescriptorReadiness()
        // A peer or a console that went away must cost an EPIPE, never the host process.
        signal(SIGPIPE, SIG_IGN)
        var opened: [Int32] = []
        for address in addresses {
            do {
                opened.append(try openListeningSocket(address))
            } catch {
                opened.forEach { _ = Glibc.close($0) }
                throw error
            }
        }
        listeners = opened
    }

    deinit {
        listeners.forEach { _ = Glibc.close($0) }
        connections.values.forEach { _ = Glibc.close($0) }
    }

    public func clockNow(_ clock: WorldClock) -> UInt64 {
        let id: clockid_t
        switch clock {
        case .realtime: id = CLOCK_REALTIME
        case .monotonic: id = CLOCK_MONOTONIC
        case .processCPU: id = CLOCK_PROCESS_CPUTIME_ID
        case .threadCPU: id = CLOCK_THREAD_CPUTIME_ID
        }
        var now = timespec()
        clock_gettime(id, &now)
        return UInt64(now.tv_sec) &* 1_000_000_000 &+ UInt64(now.tv_nsec)
    }

    public func randomBytes(into buffer: UnsafeMutableRawBufferPointer) {
        guard let base = buffer.baseAddress, !buffer.isEmpty else { return }
        let filled = understudy_getrandom(base, buffer.count)
        precondition(filled == 0, "the kernel refused entropy: \(hostErrorText())")
    }

    public func accept(listener: ListenerID) -> WorldResult<ConnectionID> {
        guard listener.index < listeners.count, listeners[listener.index] >= 0 else { return .failed(errno: EBADF) }
        let fd = understudy_accept_nonblocking(listeners[listener.index])
        guard fd >= 0 else {
            // A connection the client aborted while queued is not the listener's failure.
            let code = errno
            let retry = [EAGAIN, EWOULDBLOCK, EINTR, ECONNABORTED, EPROTO].contains(code)
            return retry ? .wouldBlock : .failed(errno: code)
        }
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        let id = ConnectionID(nextConnection)
        nextConnection += 1
        connections[id] = fd
        return .done(id)
    }

    /// Connection identities up to `highest` belong to a machine this world did not open (a
    /// restored or promoted one): new connections are numbered above them, so a guest descriptor
    /// left from before can never reach a new client.
    public func reserveConnections(through highest: UInt64) {
        nextConnection = max(nextConnection, highest + 1)
    }

    /// An identity this world has no socket for (a connection that was open in a checkpoint this
    /// machine was restored from) reads as reset by its peer: the guest closes it, as it would
    /// any dropped client.
    public func receive(connection: ConnectionID, into buffer: UnsafeMutableRawBufferPointer) -> WorldResult<Int> {
        guard let fd = connections[connection] else { return .failed(errno: ECONNRESET) }
        let got = recv(fd, buffer.baseAddress, buffer.count, 0)
        if got >= 0 { return .done(got) }
        let code = errno
        return code == EAGAIN || code == EWOULDBLOCK || code == EINTR ? .wouldBlock : .failed(errno: code)
    }

    public func send(connection: ConnectionID, bytes: UnsafeRawBufferPointer) -> WorldResult<Int> {
        guard let fd = connections[connection] else { return .failed(errno: EPIPE) }
        if bytes.isEmpty { return .done(0) }
        let sent = Glibc.send(fd, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL))
        if sent >= 0 { return .done(sent) }
        let code = errno
        return code == EAGAIN || code == EWOULDBLOCK || code == EINTR ? .wouldBlock : .failed(errno: code)
    }

    public func shutdown(connection: ConnectionID, reading: Bool, writing: Bool) {
        guard let fd = connections[connection] else { return }
        let how = reading && writing ? Int32(SHUT_RDWR) : reading ? Int32(SHUT_RD) : Int32(SHUT_WR)
        _ = Glibc.shutdown(fd, how)
    }

    public func close(connection: ConnectionID) {
        guard let fd = connections.removeValue(forKey: connection) else { return }
        readiness.forget(fd)
        _ = Glibc.close(fd)
    }

    /// The guest closed its listener: stop accepting, so clients are refused instead of queued.
    public func close(listener: ListenerID) {
        guard listener.index < listeners.count, listeners[listener.index] >= 0 else { return }
        readiness.forget(listeners[listener.index])
        _ = Glibc.close(listeners[listener.index])
        listeners[listener.index] = -1
    }

    public func poll(_ interests: [PollInterest], timeoutNanos: UInt64?) -> PollOutcome {
        while true {
            if let outcome = pollOnce(interests, timeoutNanos: timeoutNanos) { return outcome }
        }
    }

    /// nil when only a stale wake-up arrived (a request raced with its own clearing): the
    /// byte is drained and the wait starts again, rather than spinning on a readable pipe.
    private func pollOnce(_ interests: [PollInterest], timeoutNanos: UInt64?) -> PollOutcome? {
        if suspension.isPending { return .interrupted }
        var asked = interests.map { interest -> (fd: Int32, events: UInt32) in
            (descriptor(of: interest.target),
             (interest.readable ? DescriptorReadiness.readable : 0) | (interest.writable ? DescriptorReadiness.writable : 0))
        }
        asked.append((suspension.wakeDescriptor, DescriptorReadiness.readable))
        if outputWakeDescriptor >= 0 { asked.append((outputWakeDescriptor, DescriptorReadiness.readable)) }
        // A connection this world has no socket for is reported hung up at once (see `receive`).
        let orphaned = interests.indices.filter { index in
            if case .connection(let id) = interests[index].target { return connections[id] == nil }
            return false
        }
        let timeout = orphaned.isEmpty ? timeoutNanos.map { Int64(clamping: $0) } ?? -1 : 0
        let events: ArraySlice<(fd: Int32, events: UInt32)>
        switch readiness.wait(for: asked, timeoutNanos: timeout) {
        case .success(let ready): events = ready
        case .failure(let failure):
            if suspension.isPending { return .interrupted }
            return failure.errno == EINTR ? nil : .failed(errno: failure.errno)
        }
        if suspension.isPending { return .interrupted }
        var count = events.count
        let staleWakeup = events.contains { $0.fd == suspension.wakeDescriptor }
        if staleWakeup {
            suspension.drainStaleWakeups()
            count -= 1
        }
        let outputWoken = outputWakeDescriptor >= 0 && events.contains { $0.fd == outputWakeDescriptor }
        if outputWoken && orphaned.isEmpty && count == 1 { return .ready([]) }
        if count == 0 && orphaned.isEmpty { return staleWakeup ? nil : .timedOut }
        var ready: [PollReadiness] = []
        for index in interests.indices {
            if orphaned.contains(index) {
                ready.append(PollReadiness(interest: index, readable: true, writable: false, hangup: true))
                continue
            }
            let fd = asked[index].fd
            guard fd >= 0, let happened = events.first(where: { $0.fd == fd })?.events else { continue }
            // As poll(2) reports it: what was asked for, and a hangup or error whatever was asked.
            let trouble = happened & (DescriptorReadiness.hungUp | DescriptorReadiness.failed)
            let reported = happened & asked[index].events | trouble
            guard reported != 0 else { continue }
            ready.append(
                PollReadiness(
                    interest: index, readable: reported & DescriptorReadiness.readable != 0,
                    writable: reported & DescriptorReadiness.writable != 0, hangup: trouble != 0))
        }
        return .ready(ready)
    }

    public func console(_ stream: ConsoleStream, bytes: UnsafeRawBufferPointer) {
        guard let base = bytes.baseAddress else { return }
        var written = 0
        while written < bytes.count {
            let result = write(Int32(stream.rawValue), base + written, bytes.count - written)
            if result < 0 && errno == EINTR { continue }
            if result <= 0 { return }  // a closed console loses console output, not the machine
            written += result
        }
    }

    /// -1 for an identity the world no longer has; the kernel skips it, and the guest's next
    /// read on it fails with EBADF.
    private func descriptor(of target: PollTarget) -> Int32 {
        switch target {
        case .listener(let id): return id.index < listeners.count ? listeners[id.index] : -1
        case .connection(let id): return connections[id] ?? -1
        }
    }
}
