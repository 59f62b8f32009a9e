import UnderstudyCore

/// Thrown by `proc_exit`: unwinds the engine back to the machine's run loop.
struct GuestExit: Error {
    let code: UInt32
}

/// What a suspendable host call asks of the machine before touching the world.
protocol HostCallSuspension: AnyObject {
    /// Called first by every suspendable host call. Returns true when the call must return at
    /// once because the guest is now unwinding (its result is then ignored).
    func enterHostCall(mayBlock: Bool) throws -> Bool
    /// Called when the world interrupted a wait: the guest unwinds from this call, which runs
    /// again from its start after the rewind, so it must not have changed anything yet.
    func suspendInsideWait() throws
}

/// The WASI preview1 host: decodes each host call's arguments from guest memory, runs it against
/// the devices and the world, and encodes the result. Everything nondeterministic comes from
/// `world` (the seam), everything guest-visible about descriptors from `descriptors`.
final class WASIHost {
    let world: MachineWorld
    var descriptors: DescriptorTable
    let arguments: [String]
    let environment: [String]
    weak var suspension: HostCallSuspension?
    /// Set once the instance exists. A start section calling the host before that is refused.
    var installedMemory: GuestMemoryView?
    var memory: GuestMemoryView {
        get throws {
            guard let installedMemory else { throw MachineError.instantiation("the guest called the host before it was started") }
            return installedMemory
        }
    }

    /// A poll that was interrupted for a checkpoint keeps its deadline across the unwind, so the
    /// guest's timeout does not restart when the call runs again.
    var interruptedPollDeadline: ContinuousClock.Instant?

    init(world: MachineWorld, listenerCount: Int, arguments: [String], environment: [String]) {
        self.world = world
        self.descriptors = DescriptorTable(listenerCount: listenerCount)
        self.arguments = arguments
        self.environment = environment
    }

    /// One host function per offered name, for the engine to import, and the suspension point.
    func hostFunctions() -> [HostFunction] {
        let suspensionPoint = HostFunction(module: SuspensionPoints.importModule, name: SuspensionPoints.importName, parameters: [], results: []) {
            [unowned self] _ in
            _ = try self.enter(mayBlock: false)
            if let reason = self.world.haltReason { throw MachineError.halted(reason) }
            return 0
        }
        return [suspensionPoint] + WASIImportTable.signatures.map { name, signature in
            let body = implementation(of: name)
            return HostFunction(module: WASIImportTable.moduleName, name: name, parameters: signature.parameters, results: signature.results) {
                [unowned self] arguments in
                let errno: WASIErrno
                do {
                    errno = try body(arguments)
                } catch let error as WASIErrno {
                    errno = error
                }
                if let reason = self.world.haltReason { throw MachineError.halted(reason) }
                return UInt32(errno.rawValue)
            }
        }
    }

    private typealias Body = (HostCallArguments) throws -> WASIErrno

    private func implementation(of name: String) -> Body {
        switch name {
        case "args_get": return { [unowned self] p in try self.writeStrings(self.arguments, p.u32(0), p.u32(1)) }
        case "args_sizes_get": return { [unowned self] p in try self.writeSizes(self.arguments, p.u32(0), p.u32(1)) }
        case "environ_get": return { [unowned self] p in try self.writeStrings(self.environment, p.u32(0), p.u32(1)) }
        case "environ_sizes_get":
            return { [unowned self] p in try self.writeSizes(self.environment, p.u32(0), p.u32(1)) }
        case "clock_res_get": return { [unowned self] p in try self.clockResolution(p.u32(0), p.u32(1)) }
        case "clock_time_get": return { [unowned self] p in try self.clockTime(p.u32(0), p.u32(2)) }
        case "random_get": return { [unowned self] p in try self.random(p.u32(0), p.u32(1)) }
        case "sched_yield":
            return { [unowned self] _ in
                _ = try self.enter(mayBlock: false)
                return .success
            }
        case "proc_exit": return { p in throw GuestExit(code: p.u32(0)) }
        case "fd_close": return { [unowned self] p in try self.close(p.u32(0)) }
        case "fd_fdstat_get": return { [unowned self] p in try self.fdstat(p.u32(0), p.u32(1)) }
        case "fd_fdstat_set_flags": return { [unowned self] p in try self.setFlags(p.u32(0), p.u32(1)) }
        case "fd_prestat_get", "fd_prestat_dir_name":
            // No preopened directories: wasi-libc scans from fd 3 and stops at the first EBADF.
            return { _ in .badf }
        case "fd_seek": return { _ in .spipe }
        case "fd_read": return { [unowned self] p in try self.read(p.u32(0), p.u32(1), p.u32(2), p.u32(3)) }
        case "fd_write": return { [unowned self] p in try self.write(p.u32(0), p.u32(1), p.u32(2), p.u32(3)) }
        case "poll_oneoff": return { [unowned self] p in try self.pollOneoff(p.u32(0), p.u32(1), p.u32(2), p.u32(3)) }
        case "sock_accept": return { [unowned self] p in try self.accept(p.u32(0), p.u32(1), p.u32(2)) }
        case "sock_recv":
            return { [unowned self] p in try self.receive(p.u32(0), p.u32(1), p.u32(2), p.u32(3), p.u32(4), p.u32(5)) }
        case "sock_send":
            return { [unowned self] p in try self.sendOnSocket(p.u32(0), p.u32(1), p.u32(2), p.u32(4)) }
        case "sock_shutdown": return { [unowned self] p in try self.shutdown(p.u32(0), p.u32(1)) }
        default: preconditionFailure("no implementation for offered import \(name)")
        }
    }

    /// True when the guest is unwinding and the call must return now.
    func enter(mayBlock: Bool) throws -> Bool {
        guard let suspension else { return false }
        return try suspension.enterHostCall(mayBlock: mayBlock)
    }

    // MARK: start-up values (deterministic: part of the machine's configuration)

    private func writeSizes(_ strings: [String], _ countAddress: UInt32, _ sizeAddress: UInt32) throws -> WASIErrno {
        try memory.store(UInt32(strings.count), at: countAddress)
        try memory.store(UInt32(strings.reduce(0) { $0 + $1.utf8.count + 1 }), at: sizeAddress)
        return .success
    }

    private func writeStrings(_ strings: [String], _ pointers: UInt32, _ buffer: UInt32) throws -> WASIErrno {
        let memory = try memory
        _ = try memory.checked(pointers, UInt32(strings.count) * 4)
        var cursor = UInt64(buffer)
        for (index, string) in strings.enumerated() {
            let bytes = Array(string.utf8) + [0]
            guard cursor + UInt64(bytes.count) <= UInt64(UInt32.max) else { return .fault }
            try memory.store(UInt32(cursor), at: pointers + UInt32(index) * 4)
            try memory.store(bytes: bytes, at: UInt32(cursor))
            cursor += UInt64(bytes.count)
        }
        return .success
    }

    // MARK: clocks and entropy

    private func clockResolution(_ id: UInt32, _ result: UInt32) throws -> WASIErrno {
        guard WorldClock(rawValue: UInt8(truncatingIfNeeded: id)) != nil, id < 4 else { return .inval }
        try memory.store(UInt64(1_000), at: result)
        return .success
    }

    private func clockTime(_ id: UInt32, _ result: UInt32) throws -> WASIErrno {
        if try enter(mayBlock: false) { return .success }
        guard id < 4, let clock = WorldClock(rawValue: UInt8(id)) else { return .inval }
        _ = try memory.checked(result, 8)
        try memory.store(world.clockNow(clock), at: result)
        return .success
    }

    private func random(_ address: UInt32, _ length: UInt32) throws -> WASIErrno {
        if try enter(mayBlock: false) { return .success }
        try memory.withBytes(at: address, count: length) { buffer in world.randomBytes(into: buffer) }
        return .success
    }

    // MARK: descriptors

    private func fdstat(_ fd: UInt32, _ result: UInt32) throws -> WASIErrno {
        let entry = try descriptors.entry(fd)
        // Rights bits: read 1, fdstat_set_flags 3, write 6, poll 27, shutdown 28, accept 29. No
        // seek or tell on the console, so wasi-libc's isatty() says "terminal" and line-buffers.
        let filetype: UInt8
        let rights: UInt64
        switch entry.kind {
        case .stdin, .console:
            filetype = 2  // character device
            rights = 1 << 1 | 1 << 3 | 1 << 6 | 1 << 27
        case .listener, .connection:
            filetype = 6  // socket stream
            rights = 1 << 1 | 1 << 3 | 1 << 6 | 1 << 27 | 1 << 28 | 1 << 29
        }
        try memory.withBytes(at: result, count: 24) { bytes in
            bytes.initializeMemory(as: UInt8.self, repeating: 0)
            bytes[0] = filetype
            bytes.storeBytes(of: UInt16(entry.nonblocking ? 4 : 0).littleEndian, toByteOffset: 2, as: UInt16.self)
            bytes.storeBytes(of: rights.littleEndian, toByteOffset: 8, as: UInt64.self)
            bytes.storeBytes(of: rights.littleEndian, toByteOffset: 16, as: UInt64.self)
        }
        return .success
    }

    private func setFlags(_ fd: UInt32, _ flags: UInt32) throws -> WASIErrno {
        try descriptors.setNonblocking(fd, flags & 4 != 0)
        return .success
    }

    private func close(_ fd: UInt32) throws -> WASIErrno {
        if try enter(mayBlock: false) { return .success }
        switch try descriptors.remove(fd).kind {
        case .connection(let id): world.close(connection: id)
        case .listener(let id): world.close(listener: id)
        case .stdin, .console: break
        }
        return .success
    }
}
