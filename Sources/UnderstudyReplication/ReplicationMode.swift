/// The protection modes of DESIGN.md. `none` is `understudy run`; the others need a backup.
public enum ReplicationMode: UInt8, CaseIterable, Sendable, CustomStringConvertible {
    case none = 0
    case remus = 1
    case llm = 2
    case active = 3

    public var description: String {
        switch self {
        case .none: return "none"
        case .remus: return "remus"
        case .llm: return "llm"
        case .active: return "active"
        }
    }
}
