/// When to send a heartbeat and when to give the peer up, from the times things were last sent
/// and heard (monotonic nanoseconds, supplied by the caller so that tests and the deterministic
/// simulation drive the clock). Any frame counts as a sign of life; a heartbeat is only sent
/// when nothing else was sent for `interval`.
public struct PeerLiveness: Sendable {
    public enum Verdict: Equatable, Sendable {
        case alive
        /// Nothing was sent for `interval`: send a heartbeat.
        case sendHeartbeat
        /// Nothing was heard for `timeout`: the peer is gone (the backup promotes; the primary
        /// continues unprotected).
        case peerSilent(forNanos: UInt64)
    }

    public let intervalNanos: UInt64
    public let timeoutNanos: UInt64
    private var lastSent: UInt64
    private var lastHeard: UInt64
    private var lastChecked: UInt64

    public init(intervalNanos: UInt64, timeoutNanos: UInt64, now: UInt64) {
        precondition(intervalNanos > 0 && timeoutNanos > intervalNanos, "the timeout must exceed the heartbeat interval")
        self.intervalNanos = intervalNanos
        self.timeoutNanos = timeoutNanos
        lastSent = now
        lastHeard = now
        lastChecked = now
    }

    public mutating func sent(at now: UInt64) { lastSent = max(lastSent, now) }
    public mutating func heard(at now: UInt64) { lastHeard = max(lastHeard, now) }

    /// Silence wins over sending: a peer that is gone needs no heartbeat. A verdict is asked for
    /// every `interval`: a gap of a whole `timeout` since the last one means this process itself
    /// did not run (stopped, paused, starved), and the peer's silence over that gap proves
    /// nothing. The peer then gets a fresh `timeout` from now, in which whatever it sent
    /// meanwhile (a goodbye, say) is read; a peer that is really gone is given up one timeout later.
    /// A shorter late check (the event loop held up applying a large checkpoint, say) is the same
    /// in small: the time this side could not read is not counted as the peer's silence.
    public mutating func verdict(at now: UInt64) -> Verdict {
        defer { lastChecked = max(lastChecked, now) }
        if now >= lastChecked {
            let gap = now - lastChecked
            if gap >= timeoutNanos {
                heard(at: now)
            } else if gap > 2 * intervalNanos {
                lastHeard = min(now, lastHeard + (gap - intervalNanos))
            }
        }
        let silence = now >= lastHeard ? now - lastHeard : 0
        if silence >= timeoutNanos { return .peerSilent(forNanos: silence) }
        if now >= lastSent && now - lastSent >= intervalNanos { return .sendHeartbeat }
        return .alive
    }
}
