/// WASI preview1 error numbers (`wasi_snapshot_preview1` `errno`), the ones our devices return.
/// Thrown inside a host call and turned into the call's result, so a device never has to thread
/// error codes by hand.
enum WASIErrno: UInt16, Error {
    case success = 0
    case again = 6
    case badf = 8
    case connaborted = 13
    case connrefused = 14
    case connreset = 15
    case fault = 21
    case inval = 28
    case io = 29
    case mfile = 33
    case netunreach = 40
    case nfile = 41
    case nobufs = 42
    case nomem = 48
    case nosys = 52
    case notconn = 53
    case notsock = 57
    case notsup = 58
    case pipe = 64
    case spipe = 70
    case timedout = 73

    /// Maps a host errno from a failed socket operation to what the guest should see.
    init(hostErrno: Int32) {
        switch hostErrno {
        case 104: self = .connreset  // ECONNRESET
        case 103: self = .connaborted  // ECONNABORTED
        case 111: self = .connrefused  // ECONNREFUSED
        case 32: self = .pipe  // EPIPE
        case 107: self = .notconn  // ENOTCONN
        case 9: self = .badf
        case 24: self = .mfile  // EMFILE
        case 23: self = .nfile  // ENFILE
        case 105: self = .nobufs  // ENOBUFS
        case 12: self = .nomem  // ENOMEM
        case 110: self = .timedout  // ETIMEDOUT
        case 101: self = .netunreach  // ENETUNREACH
        case 22: self = .inval
        default: self = .io
        }
    }
}
