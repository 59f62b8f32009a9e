import UnderstudyCore

/// `poll_oneoff`: the call an event-loop guest spends its idle time in.
extension WASIHost {
    private static let subscriptionSize: UInt32 = 48
    private static let eventSize: UInt32 = 32
    private static let subscriptionsMax: UInt32 = 16_384

    private enum EventType: UInt8 {
        case clock = 0
        case fdRead = 1
        case fdWrite = 2
    }

    private struct Event {
        var userdata: UInt64
        var error: WASIErrno = .success
        var type: EventType
        var hangup = false
    }

    private struct Watch {
        var userdata: UInt64
        var type: EventType
    }

    func pollOneoff(_ input: UInt32, _ output: UInt32, _ count: UInt32, _ resultCount: UInt32) throws -> WASIErrno {
        guard count > 0, count <= Self.subscriptionsMax else { return .inval }
        let memory = try memory
        _ = try memory.checked(input, count * Self.subscriptionSize)
        _ = try memory.checked(output, count * Self.eventSize)
        _ = try memory.checked(resultCount, 4)

        var immediate: [Event] = []
        var interests: [PollInterest] = []
        var watches: [Watch] = []
        var clockUserdata: [(userdata: UInt64, timeout: UInt64)] = []
        for index in 0..<count {
            let base = input + index * Self.subscriptionSize
            let userdata = try memory.load(UInt64.self, at: base)
            let tag = try memory.load(UInt8.self, at: base + 8)
            switch tag {
            case EventType.clock.rawValue:
                let timeout = try memory.load(UInt64.self, at: base + 24)
                let flags = try memory.load(UInt16.self, at: base + 40)
                guard flags & 1 == 0 else {
                    // Absolute deadlines would need a clock reading here; no guest we run uses them.
                    immediate.append(Event(userdata: userdata, error: .notsup, type: .clock))
                    continue
                }
                clockUserdata.append((userdata, timeout))
            case EventType.fdRead.rawValue, EventType.fdWrite.rawValue:
                let type = EventType(rawValue: tag)!
                let fd = try memory.load(UInt32.self, at: base + 16)
                guard let entry = try? descriptors.entry(fd) else {
                    immediate.append(Event(userdata: userdata, error: .badf, type: type))
                    continue
                }
                switch entry.kind {
                case .stdin, .console:
                    immediate.append(Event(userdata: userdata, type: type))  // never blocks
                case .listener(let id):
                    interests.append(PollInterest(target: .listener(id), readable: type == .fdRead, writable: type == .fdWrite))
                    watches.append(Watch(userdata: userdata, type: type))
                case .connection(let id):
                    interests.append(PollInterest(target: .connection(id), readable: type == .fdRead, writable: type == .fdWrite))
                    watches.append(Watch(userdata: userdata, type: type))
                }
            default:
                return .inval
            }
        }

        let earliest = clockUserdata.map(\.timeout).min()
        let mayBlock = immediate.isEmpty && earliest != 0
        if try enter(mayBlock: mayBlock) { return .success }

        var events = immediate
        if interests.isEmpty && !immediate.isEmpty {
            return try finish(events, output, resultCount)
        }
        let deadline = interruptedPollDeadline ?? earliest.map { ContinuousClock.now + .nanoseconds(Int64(clamping: $0)) }
        interruptedPollDeadline = nil
        while true {
            let timeout: UInt64? = immediate.isEmpty ? deadline.map(Self.nanosUntil) : 0
            let outcome = world.poll(interests, timeoutNanos: timeout)
            switch outcome {
            case .interrupted:
                guard let suspension else { continue }
                interruptedPollDeadline = deadline
                try suspension.suspendInsideWait()
                return .success
            case .failed(let errno):
                return WASIErrno(hostErrno: errno)
            case .timedOut:
                // A zero-timeout check (because other events were already there) is not the
                // clock's own wait: its deadline has not passed unless it was zero.
                if immediate.isEmpty || earliest == 0 {
                    for clock in clockUserdata where clock.timeout == earliest {
                        events.append(Event(userdata: clock.userdata, type: .clock))
                    }
                }
            case .ready(let ready):
                for readiness in ready {
                    let watch = watches[readiness.interest]
                    let fired = watch.type == .fdRead ? (readiness.readable || readiness.hangup) : readiness.writable || readiness.hangup
                    guard fired else { continue }
                    // wasi-libc reports a write-side hang-up as POLLHUP only through EPIPE.
                    let error: WASIErrno = watch.type == .fdWrite && readiness.hangup ? .pipe : .success
                    events.append(Event(userdata: watch.userdata, error: error, type: watch.type, hangup: readiness.hangup))
                }
            }
            // Whether to wait again depends only on what the world answered, never on the host
            // clock, so a replay that gets the same answers makes the same calls.
            if !events.isEmpty || outcome == .timedOut { return try finish(events, output, resultCount) }
        }
    }

    private static func nanosUntil(_ deadline: ContinuousClock.Instant) -> UInt64 {
        let remaining = deadline - ContinuousClock.now
        if remaining <= .zero { return 0 }
        let (seconds, attoseconds) = remaining.components
        return UInt64(seconds) &* 1_000_000_000 &+ UInt64(attoseconds / 1_000_000_000)
    }

    private func finish(_ events: [Event], _ output: UInt32, _ resultCount: UInt32) throws -> WASIErrno {
        let memory = try memory
        for (index, event) in events.enumerated() {
            try memory.withBytes(at: output + UInt32(index) * Self.eventSize, count: Self.eventSize) { bytes in
                bytes.initializeMemory(as: UInt8.self, repeating: 0)
                bytes.storeBytes(of: event.userdata.littleEndian, toByteOffset: 0, as: UInt64.self)
                bytes.storeBytes(of: event.error.rawValue.littleEndian, toByteOffset: 8, as: UInt16.self)
                bytes[10] = event.type.rawValue
                if event.type != .clock {
                    // nbytes is advisory; wasi-libc's poll() only reads the type and flags.
                    bytes.storeBytes(of: UInt64(1).littleEndian, toByteOffset: 16, as: UInt64.self)
                    bytes.storeBytes(of: UInt16(event.hangup ? 1 : 0).littleEndian, toByteOffset: 24, as: UInt16.self)
                }
            }
        }
        try memory.store(UInt32(events.count), at: resultCount)
        return .success
    }
}
