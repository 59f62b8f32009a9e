/// The replication layer (issues 4 and 5): wire protocol, modes, failover. It will see a
/// machine only through a protocol over values, never through WasmKit. Not built yet.
public enum ReplicationLayer {
    /// The protection modes of DESIGN.md; only `none` (`understudy run`) exists today.
    public enum Mode: String, CaseIterable, Sendable {
        case none, remus, llm, active
    }
}
