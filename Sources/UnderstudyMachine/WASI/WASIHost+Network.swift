import UnderstudyCore

/// Stream I/O on connections and listeners. A call on a blocking descriptor that cannot proceed
/// waits in the world (never spins); a wait interrupted for a checkpoint suspends the guest
/// before anything guest-visible has happened, so the call can simply run again after the rewind.
extension WASIHost {
    func read(_ fd: UInt32, _ vectors: UInt32, _ vectorCount: UInt32, _ result: UInt32) throws -> WASIErrno {
        let entry = try descriptors.entry(fd)
        switch entry.kind {
        case .stdin:
            if try enter(mayBlock: false) { return .success }
            try memory.store(UInt32(0), at: result)  // the console has no input: end of file
            return .success
        case .connection(let id):
            return try receive(id, entry, vectors, vectorCount, result)
        case .console, .listener:
            return .badf
        }
    }

    func receive(
        _ fd: UInt32, _ vectors: UInt32, _ vectorCount: UInt32, _ flags: UInt32, _ result: UInt32, _ resultFlags: UInt32
    ) throws -> WASIErrno {
        let entry = try descriptors.entry(fd)
        guard case .connection(let id) = entry.kind else { return .notsock }
        // MSG_PEEK and MSG_WAITALL would need the world to keep bytes it handed out.
        guard flags == 0 else { return .notsup }
        _ = try memory.checked(resultFlags, 2)
        let errno = try receive(id, entry, vectors, vectorCount, result)
        if errno == .success { try memory.store(UInt16(0), at: resultFlags) }
        return errno
    }

    private func receive(
        _ id: ConnectionID, _ entry: DescriptorTable.Entry, _ vectors: UInt32, _ vectorCount: UInt32, _ result: UInt32
    ) throws -> WASIErrno {
        if try enter(mayBlock: !entry.nonblocking) { return .success }
        _ = try memory.checked(result, 4)
        // One vector per call: a short read is always allowed, and it spares a gather copy.
        guard let target = try memory.ioVectors(at: vectors, count: vectorCount).first(where: { $0.length > 0 }) else {
            try memory.store(UInt32(0), at: result)
            return .success
        }
        let readable = PollInterest(target: .connection(id), readable: true, writable: false)
        let received = try completing(readable, nonblocking: entry.nonblocking) {
            try memory.withBytes(at: target.base, count: target.length) { world.receive(connection: id, into: $0) }
        }
        guard let received else { return .success }
        try memory.store(UInt32(received), at: result)
        return .success
    }

    /// Bound on the bytes one write call takes from the guest: a short write is always allowed,
    /// and it keeps a guest from making the host copy its whole memory many times over.
    static let writeBytesMax = 1 << 20

    func sendOnSocket(_ fd: UInt32, _ vectors: UInt32, _ vectorCount: UInt32, _ result: UInt32) throws -> WASIErrno {
        guard case .connection = try descriptors.entry(fd).kind else { return .notsock }
        return try write(fd, vectors, vectorCount, result)
    }

    func write(_ fd: UInt32, _ vectors: UInt32, _ vectorCount: UInt32, _ result: UInt32) throws -> WASIErrno {
        let entry = try descriptors.entry(fd)
        if try enter(mayBlock: !entry.nonblocking) { return .success }
        let memory = try memory
        _ = try memory.checked(result, 4)
        var gathered: [UInt8] = []
        for piece in try memory.ioVectors(at: vectors, count: vectorCount) where gathered.count < Self.writeBytesMax {
            let length = min(piece.length, UInt32(Self.writeBytesMax - gathered.count))
            try memory.withBytes(at: piece.base, count: length) { gathered.append(contentsOf: $0) }
        }
        switch entry.kind {
        case .console(let stream):
            gathered.withUnsafeBytes { world.console(stream, bytes: $0) }
            try memory.store(UInt32(gathered.count), at: result)
            return .success
        case .connection(let id):
            return try send(gathered, on: id, entry, result)
        case .stdin, .listener:
            return .badf
        }
    }

    private func send(
        _ bytes: [UInt8], on id: ConnectionID, _ entry: DescriptorTable.Entry, _ result: UInt32
    ) throws -> WASIErrno {
        let writable = PollInterest(target: .connection(id), readable: false, writable: true)
        let sent = try completing(writable, nonblocking: entry.nonblocking) {
            bytes.withUnsafeBytes { world.send(connection: id, bytes: $0) }
        }
        guard let sent else { return .success }
        try memory.store(UInt32(sent), at: result)
        return .success
    }

    func accept(_ fd: UInt32, _ flags: UInt32, _ result: UInt32) throws -> WASIErrno {
        let entry = try descriptors.entry(fd)
        guard case .listener(let listener) = entry.kind else { return .notsock }
        if try enter(mayBlock: !entry.nonblocking) { return .success }
        _ = try memory.checked(result, 4)
        let pending = PollInterest(target: .listener(listener), readable: true, writable: false)
        guard let connection = try completing(pending, nonblocking: entry.nonblocking, { world.accept(listener: listener) })
        else { return .success }
        let newFD: UInt32
        do {
            newFD = try descriptors.insert(.init(kind: .connection(connection), nonblocking: flags & 4 != 0))
        } catch {
            world.close(connection: connection)
            throw error
        }
        try memory.store(newFD, at: result)
        return .success
    }

    func shutdown(_ fd: UInt32, _ how: UInt32) throws -> WASIErrno {
        let entry = try descriptors.entry(fd)
        guard case .connection(let id) = entry.kind else { return .notsock }
        guard how & 3 != 0, how & ~3 == 0 else { return .inval }
        if try enter(mayBlock: false) { return .success }
        world.shutdown(connection: id, reading: how & 1 != 0, writing: how & 2 != 0)
        return .success
    }

    /// Runs `attempt` until the world completes it: a failure or, on a non-blocking descriptor,
    /// EAGAIN is thrown as the guest's errno; on a blocking one the call waits for `interest`.
    /// nil when the wait was interrupted and the guest is now unwinding.
    private func completing<Value>(
        _ interest: PollInterest, nonblocking: Bool, _ attempt: () throws -> WorldResult<Value>
    ) throws -> Value? {
        while true {
            switch try attempt() {
            case .done(let value): return value
            case .failed(let errno): throw WASIErrno(hostErrno: errno)
            case .wouldBlock:
                if nonblocking { throw WASIErrno.again }
                guard try waitFor(interest) else { return nil }
            }
        }
    }

    /// Blocks until `interest` is ready. False when the wait was interrupted and the guest is
    /// now unwinding.
    private func waitFor(_ interest: PollInterest) throws -> Bool {
        switch world.poll([interest], timeoutNanos: nil) {
        case .interrupted:
            guard let suspension else { return true }
            try suspension.suspendInsideWait()
            return false
        case .failed(let errno):
            throw WASIErrno(hostErrno: errno)
        case .ready, .timedOut:
            return true
        }
    }
}
