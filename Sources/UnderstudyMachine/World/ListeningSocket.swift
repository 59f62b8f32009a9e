import Glibc
import UnderstudyCore

public enum ListenError: Error, CustomStringConvertible, Equatable {
    case unresolvable(ServiceAddress)
    case failed(ServiceAddress, step: String, reason: String)
    /// The kernel gave no epoll descriptor to wait with.
    case noReadiness(reason: String)

    public var description: String {
        switch self {
        case .unresolvable(let address): return "cannot listen on \(address): not a numeric IPv4 or IPv6 address"
        case .failed(let address, let step, let reason): return "cannot listen on \(address): \(step) failed: \(reason)"
        case .noReadiness(let reason): return "cannot wait for connections: epoll_create1 failed: \(reason)"
        }
    }
}

/// Opens a non-blocking TCP listener on `address` and returns its descriptor.
func openListeningSocket(_ address: ServiceAddress, backlog: Int32 = 1024) throws(ListenError) -> Int32 {
    var storage = sockaddr_storage()
    let length: socklen_t
    let family: Int32
    if address.host.contains(":") {
        family = AF_INET6
        var v6 = sockaddr_in6()
        v6.sin6_family = sa_family_t(AF_INET6)
        v6.sin6_port = address.port.bigEndian
        guard inet_pton(AF_INET6, address.host, &v6.sin6_addr) == 1 else { throw .unresolvable(address) }
        withUnsafeBytes(of: v6) { source in
            withUnsafeMutableBytes(of: &storage) { $0.copyMemory(from: source) }
        }
        length = socklen_t(MemoryLayout<sockaddr_in6>.size)
    } else {
        family = AF_INET
        var v4 = sockaddr_in()
        v4.sin_family = sa_family_t(AF_INET)
        v4.sin_port = address.port.bigEndian
        guard inet_pton(AF_INET, address.host, &v4.sin_addr) == 1 else { throw .unresolvable(address) }
        withUnsafeBytes(of: v4) { source in
            withUnsafeMutableBytes(of: &storage) { $0.copyMemory(from: source) }
        }
        length = socklen_t(MemoryLayout<sockaddr_in>.size)
    }
    let fd = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { throw .failed(address, step: "socket", reason: hostErrorText()) }
    var one: Int32 = 1
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
    // A service IP may not be on this host yet (a backup opens the service before it announces
    // the address, or the address is still coming up): bind it regardless.
    let ipFreebind: Int32 = 15  // <linux/in.h>; Glibc's module does not export it
    setsockopt(fd, Int32(IPPROTO_IP), ipFreebind, &one, socklen_t(MemoryLayout<Int32>.size))
    let bound = withUnsafePointer(to: &storage) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
    }
    guard bound == 0 else {
        let reason = hostErrorText()
        close(fd)
        throw .failed(address, step: "bind", reason: reason)
    }
    guard listen(fd, backlog) == 0 else {
        let reason = hostErrorText()
        close(fd)
        throw .failed(address, step: "listen", reason: reason)
    }
    return fd
}

func hostErrorText(_ code: Int32 = errno) -> String {
    String(cString: strerror(code))
}
