import Metrics
import UnderstudyReplication

/// What `--metrics` shows of replication (issue 4, part 6). Labels carry the role so one
/// Prometheus can scrape both sides.
struct ReplicationMetrics {
    let protected: Gauge
    let epochs: Counter
    let bytesSent: Counter
    let capture: Metrics.Timer
    let pages: Recorder
    let failovers: Counter
    let checkpointsApplied: Counter
    let logHeld: Gauge
    let logLag: Gauge
    /// Checkpoints, syncs and repairs: the memory-state traffic (the rest is the event log).
    let stateBytesSent: Counter
    let syncs: Counter
    /// Syncs whose digests differed, and the blocks they repaired.
    let divergences: Counter
    let repairedBlocks: Counter
    /// What the repairs sent (primary).
    let repairBytes: Counter
    /// `--verify-syncs`: whole states found equal after a sync, and not.
    let verified: Counter
    let verificationFailures: Counter
    /// How far the backup's machine is behind the log it holds, at its syncs.
    let followLag: Gauge

    init(role: String, mode: String = "") {
        let dimensions = [("role", role)]
        protected = Gauge(label: "understudy_protected", dimensions: dimensions + (mode.isEmpty ? [] : [("mode", mode)]))
        epochs = Counter(label: "understudy_checkpoints_sent", dimensions: dimensions)
        bytesSent = Counter(label: "understudy_replicated_bytes", dimensions: dimensions)
        capture = Metrics.Timer(label: "understudy_checkpoint_capture", dimensions: dimensions)
        pages = Recorder(label: "understudy_checkpoint_pages", dimensions: dimensions)
        failovers = Counter(label: "understudy_failovers", dimensions: dimensions)
        checkpointsApplied = Counter(label: "understudy_checkpoints_applied", dimensions: dimensions)
        logHeld = Gauge(label: "understudy_log_held_entries", dimensions: dimensions)
        logLag = Gauge(label: "understudy_log_unacknowledged_entries", dimensions: dimensions)
        stateBytesSent = Counter(label: "understudy_state_bytes", dimensions: dimensions)
        syncs = Counter(label: "understudy_syncs", dimensions: dimensions)
        divergences = Counter(label: "understudy_sync_divergences", dimensions: dimensions)
        repairedBlocks = Counter(label: "understudy_sync_repaired_blocks", dimensions: dimensions)
        repairBytes = Counter(label: "understudy_sync_repair_bytes", dimensions: dimensions)
        verified = Counter(label: "understudy_sync_verified", dimensions: dimensions)
        verificationFailures = Counter(label: "understudy_sync_verification_failures", dimensions: dimensions)
        followLag = Gauge(label: "understudy_follow_lag_entries", dimensions: dimensions)
    }

    /// A message carrying the backup's state (a checkpoint, a sync message, a repair) went out:
    /// its payload counts in the replicated bytes and in the state bytes. Returns the count.
    @discardableResult
    func stateSent(_ message: WireMessage) -> Int64 {
        let bytes = Int64(WireCodec.payloadBytes(message))
        bytesSent.increment(by: bytes)
        stateBytesSent.increment(by: bytes)
        return bytes
    }
}
