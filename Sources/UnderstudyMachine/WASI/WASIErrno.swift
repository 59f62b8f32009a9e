/// WASI preview1 error numbers (`wasi_snapshot_preview1` `errno`), the ones our devices return.
/// Thrown inside a host call and turned into the call's result, so a device never has to thread
/// error codes by hand.
enum WASIErrno: UInt16, Error {
    case success = 0
    case again = 6
    case badf = 8
    case connreset = 15
    case fault = 21
    case inval = 28
    case io = 29
    case mfile = 33
    case nosys = 52
    case notconn = 53
    case notsock = 57
    case notsup = 58
    case pipe = 64
    case spipe = 70

    /// Maps a host errno from a failed socket operation to what the guest should see.
    init(hostErrno: Int32) {
        switch hostErrno {
        case 104: self = .connreset  // ECONNRESET
        case 32: self = .pipe  // EPIPE
        case 107: self = .notconn  // ENOTCONN
        case 9: self = .badf
        default: self = .io
        }
    }
}
