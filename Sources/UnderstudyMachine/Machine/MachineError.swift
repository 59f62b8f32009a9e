/// Why a machine could not start or stopped abnormally; each description is the one line the
/// command prints.
public enum MachineError: Error, CustomStringConvertible {
    case instantiation(String)
    case trapped(String)
    case suspension(String)
    /// The world stopped answering (`MachineWorld.haltReason`): replay ended or diverged.
    case halted(String)

    public var description: String {
        switch self {
        case .instantiation(let reason): return "cannot start the guest: \(reason)"
        case .trapped(let reason): return "the guest trapped: \(reason)"
        case .suspension(let reason): return "cannot suspend the guest: \(reason)"
        case .halted(let reason): return "the machine stopped: \(reason)"
        }
    }
}
