import UnderstudyCore

/// The guest's file-descriptor table: which guest fd is the console, a listener or a connection,
/// and its flags. This is device state the engine does not hold, so the machine owns it and
/// saves it (DESIGN.md: WasmKit's bundled WASI keeps it host-side, outside any snapshot).
public struct DescriptorTable: Equatable, Sendable {
    public enum Kind: Equatable, Sendable {
        case stdin
        case console(ConsoleStream)
        case listener(ListenerID)
        case connection(ConnectionID)
    }

    public struct Entry: Equatable, Sendable {
        public var kind: Kind
        public var nonblocking: Bool

        public init(kind: Kind, nonblocking: Bool) {
            self.kind = kind
            self.nonblocking = nonblocking
        }
    }

    /// Bound on open descriptors: a guest that leaks connections gets EMFILE, not host exhaustion.
    public static let descriptorsMax = 16_384

    /// Indexed by guest fd; nil is a free slot.
    public private(set) var entries: [Entry?]
    /// No slot below this is free: keeps `insert` from rescanning a table full of connections.
    private var lowestFreeCandidate = 0

    /// stdin, stdout, stderr, then one listener per `--listen`, from fd 3 on (the
    /// `wasmtime run --tcplisten` convention the guests rely on).
    public init(listenerCount: Int) {
        entries = [
            Entry(kind: .stdin, nonblocking: false),
            Entry(kind: .console(.stdout), nonblocking: false),
            Entry(kind: .console(.stderr), nonblocking: false),
        ]
        for index in 0..<listenerCount {
            entries.append(Entry(kind: .listener(ListenerID(index)), nonblocking: false))
        }
    }

    /// Two tables are the same when the guest would see the same descriptors; the search hint is
    /// not state (a restored table starts without it and finds the same free slots).
    public static func == (lhs: DescriptorTable, rhs: DescriptorTable) -> Bool { lhs.entries == rhs.entries }

    /// A table as a checkpoint saved it.
    public init(entries: [Entry?]) {
        self.entries = entries
        while let last = self.entries.last, last == nil { self.entries.removeLast() }
    }

    func entry(_ fd: UInt32) throws(WASIErrno) -> Entry {
        guard Int(fd) < entries.count, let entry = entries[Int(fd)] else { throw .badf }
        return entry
    }

    /// The lowest free descriptor, as POSIX assigns them: deterministic, so replay agrees.
    mutating func insert(_ entry: Entry) throws(WASIErrno) -> UInt32 {
        if let free = entries[min(lowestFreeCandidate, entries.count)...].firstIndex(where: { $0 == nil }) {
            entries[free] = entry
            lowestFreeCandidate = free + 1
            return UInt32(free)
        }
        lowestFreeCandidate = entries.count
        guard entries.count < Self.descriptorsMax else { throw .mfile }
        entries.append(entry)
        return UInt32(entries.count - 1)
    }

    mutating func setNonblocking(_ fd: UInt32, _ nonblocking: Bool) throws(WASIErrno) {
        _ = try entry(fd)
        entries[Int(fd)]?.nonblocking = nonblocking
    }

    @discardableResult
    mutating func remove(_ fd: UInt32) throws(WASIErrno) -> Entry {
        let removed = try entry(fd)
        entries[Int(fd)] = nil
        while let last = entries.last, last == nil { entries.removeLast() }
        lowestFreeCandidate = min(lowestFreeCandidate, Int(fd), entries.count)
        return removed
    }

    public var openConnections: [ConnectionID] {
        entries.compactMap { entry in
            if case .connection(let id) = entry?.kind { return id }
            return nil
        }
    }

    /// The highest connection identity the guest holds (0 for none): a world serving this table
    /// numbers its new connections above it.
    public var highestConnection: UInt64 { openConnections.map(\.value).max() ?? 0 }
}
