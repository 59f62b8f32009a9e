import CUnderstudyHost
import Glibc

/// Waits for the world's descriptors with epoll. The set stays registered in the kernel between
/// waits, and only a change is told to it: a ppoll walked every connection, and queued on each
/// socket, at every wait of the guest. A guest asks for the same descriptors wait after wait (a
/// server's poll list changes only as clients come and go), so the usual wait is one compare of
/// the list with the last one and one `epoll_pwait2`.
final class DescriptorReadiness {
    static let readable: UInt32 = 0x001  // EPOLLIN
    static let writable: UInt32 = 0x004  // EPOLLOUT
    static let failed: UInt32 = 0x008  // EPOLLERR
    static let hungUp: UInt32 = 0x010  // EPOLLHUP

    private let epoll: Int32
    /// What the kernel has, by descriptor.
    private var registered: [Int32: UInt32] = [:]
    /// The last list asked for, `fd << 32 | events` in order: equal to the next, nothing changes.
    private var lastAsked: [UInt64] = []
    private var readyDescriptors: [Int32] = []
    private var readyEvents: [UInt32] = []

    init() throws(ListenError) {
        epoll = understudy_epoll_create()
        guard epoll >= 0 else { throw .noReadiness(reason: hostErrorText()) }
    }

    deinit { _ = Glibc.close(epoll) }

    /// Waits until one of `asked` (descriptor and events; a descriptor may appear more than once)
    /// is ready, or `timeoutNanos` (< 0: no limit) passes. The descriptors that are, with their
    /// events, or the errno of a failed wait.
    func wait(for asked: [(fd: Int32, events: UInt32)], timeoutNanos: Int64) -> Result<ArraySlice<(fd: Int32, events: UInt32)>, WaitFailure> {
        let packed = asked.map { UInt64(UInt32(bitPattern: $0.fd)) << 32 | UInt64($0.events) }
        if packed != lastAsked {
            if let failure = register(asked) { return .failure(failure) }
            lastAsked = packed
        }
        let capacity = max(registered.count, 1)
        if readyDescriptors.count < capacity {
            readyDescriptors = [Int32](repeating: 0, count: capacity)
            readyEvents = [UInt32](repeating: 0, count: capacity)
        }
        let count = understudy_epoll_wait(epoll, &readyDescriptors, &readyEvents, Int32(capacity), timeoutNanos)
        guard count >= 0 else { return .failure(WaitFailure(errno: errno)) }
        return .success(zip(readyDescriptors, readyEvents).prefix(Int(count)).map { (fd: $0.0, events: $0.1) }[...])
    }

    struct WaitFailure: Error {
        let errno: Int32
    }

    /// The world is about to close `fd`: its number may come back as another connection, which
    /// must be registered anew.
    func forget(_ fd: Int32) {
        guard registered.removeValue(forKey: fd) != nil else { return }
        _ = understudy_epoll_set(epoll, 2, fd, 0)
        lastAsked = []
    }

    private func register(_ asked: [(fd: Int32, events: UInt32)]) -> WaitFailure? {
        var wanted: [Int32: UInt32] = [:]
        for (fd, events) in asked where fd >= 0 { wanted[fd, default: 0] |= events }
        for (fd, _) in registered where wanted[fd] == nil {
            _ = understudy_epoll_set(epoll, 2, fd, 0)
            registered[fd] = nil
        }
        for (fd, events) in wanted where registered[fd] != events {
            let operation: Int32 = registered[fd] == nil ? 1 : 3
            guard understudy_epoll_set(epoll, operation, fd, events) == 0 else {
                let code = errno
                registered[fd] = nil
                return WaitFailure(errno: code)
            }
            registered[fd] = events
        }
        return nil
    }
}
