import UnderstudyCore

/// A whole event log, as read back: the module it belongs to and its entries, where the entry at
/// index i has log position (sequence number) i.
public struct EventLog: Equatable, Sendable {
    public var moduleHash: String
    public var entries: [EventLogEntry]

    public init(moduleHash: String, entries: [EventLogEntry]) {
        self.moduleHash = moduleHash
        self.entries = entries
    }
}

public enum EventLogError: Error, CustomStringConvertible, Equatable {
    case notAnEventLog
    case corruptHeader
    case unsupportedVersion(UInt16)
    case truncated(entry: UInt64, offset: Int)
    case corruptRecord(entry: UInt64, offset: Int)
    case outOfSequence(expected: UInt64, found: UInt64, offset: Int)
    case malformed(entry: UInt64, reason: String)
    case unreadable(String)

    public var description: String {
        switch self {
        case .notAnEventLog: return "not an understudy event log (bad magic)"
        case .corruptHeader: return "the event log's header fails its checksum"
        case .unsupportedVersion(let version):
            return "event log format version \(version) is not supported (this build reads version \(EventLogCodec.formatVersion))"
        case .truncated(let entry, let offset): return "the event log is truncated in entry \(entry) (ends at byte \(offset))"
        case .corruptRecord(let entry, let offset): return "event log entry \(entry) at byte \(offset) fails its checksum"
        case .outOfSequence(let expected, let found, let offset):
            return "event log entry at byte \(offset) has sequence number \(found), expected \(expected)"
        case .malformed(let entry, let reason): return "malformed event log entry \(entry): \(reason)"
        case .unreadable(let reason): return "cannot read the event log: \(reason)"
        }
    }
}

extension EventLogCodec {
    /// Decodes a whole log; any damage is refused with its reason and nothing is returned.
    public static func decode(_ bytes: [UInt8]) throws(EventLogError) -> EventLog {
        var reader = ByteReader(bytes[...])
        let moduleHash: String
        do {
            guard try reader.raw(magic.count).elementsEqual(magic) else { throw EventLogError.notAnEventLog }
            let version = try reader.u16()
            guard version == formatVersion else { throw EventLogError.unsupportedVersion(version) }
            moduleHash = try reader.string()
            let computed = bytes[..<reader.offset].withUnsafeBytes { CRC32C.checksum($0) }
            guard try reader.u32() == computed else { throw EventLogError.corruptHeader }
        } catch let error as EventLogError {
            throw error
        } catch {
            throw .notAnEventLog
        }
        var entries: [EventLogEntry] = []
        var records = RecordReader(reader: reader, expected: 0)
        while let entry = try records.next() { entries.append(entry) }
        return EventLog(moduleHash: moduleHash, entries: entries)
    }

    /// Decodes a run of records that starts at entry `first` (a stream chunk, issue 4).
    public static func decodeRecords(_ bytes: ArraySlice<UInt8>, first: UInt64) throws(EventLogError) -> [EventLogEntry] {
        let (entries, damage) = decodeRecordPrefix(bytes, first: first)
        if let damage { throw damage }
        return entries
    }

    /// Decodes a run of records that starts at entry `first` up to the first that is damaged:
    /// the entries before it, and what is wrong with it (nil if none is).
    public static func decodeRecordPrefix(_ bytes: ArraySlice<UInt8>, first: UInt64) -> (entries: [EventLogEntry], damage: EventLogError?) {
        var records = RecordReader(reader: ByteReader(bytes), expected: first)
        var entries: [EventLogEntry] = []
        do {
            while let entry = try records.next() { entries.append(entry) }
        } catch {
            return (entries, error)
        }
        return (entries, nil)
    }

    /// Checks a run of records that starts at entry `first` — each in sequence, whole, its checksum
    /// right — without decoding a payload, and counts them: what a backup keeps as it arrives, to
    /// decode only if it ever replays them.
    public static func checkRecords(_ bytes: ArraySlice<UInt8>, first: UInt64) throws(EventLogError) -> Int {
        var records = RecordReader(reader: ByteReader(bytes), expected: first)
        var count = 0
        while try records.nextRecord() != nil { count += 1 }
        return count
    }
}

private struct RecordReader {
    var reader: ByteReader
    var expected: UInt64

    mutating func next() throws(EventLogError) -> EventLogEntry? {
        guard let (sequence, type, payload) = try nextRecord() else { return nil }
        do {
            var body = ByteReader(payload)
            let entry = try Self.decodePayload(type: type, &body, sequence: sequence)
            guard body.isAtEnd else { throw EventLogError.malformed(entry: sequence, reason: "trailing bytes") }
            return entry
        } catch let error as EventLogError {
            throw error
        } catch {
            throw EventLogError.malformed(entry: sequence, reason: "its payload is too short")
        }
    }

    /// The next record's framing, checked (whole, checksum, sequence); its payload undecoded.
    mutating func nextRecord() throws(EventLogError) -> (sequence: UInt64, type: UInt8, payload: ArraySlice<UInt8>)? {
        guard !reader.isAtEnd else { return nil }
        let start = reader.offset
        let sequence: UInt64
        let type: UInt8
        let payload: ArraySlice<UInt8>
        do {
            sequence = try reader.u64()
            type = try reader.u8()
            let length = Int(try reader.u32())
            payload = try reader.raw(length)
            let stored = try reader.u32()
            let computed = reader.bytes[start..<reader.offset - 4].withUnsafeBytes { CRC32C.checksum($0) }
            guard stored == computed else { throw EventLogError.corruptRecord(entry: expected, offset: start) }
        } catch let error as EventLogError {
            throw error
        } catch {
            throw EventLogError.truncated(entry: expected, offset: reader.bytes.endIndex)
        }
        guard sequence == expected else { throw EventLogError.outOfSequence(expected: expected, found: sequence, offset: start) }
        expected += 1
        return (sequence, type, payload)
    }

    private static func decodePayload(type: UInt8, _ r: inout ByteReader, sequence: UInt64) throws -> EventLogEntry {
        func bad(_ reason: String) -> EventLogError { .malformed(entry: sequence, reason: reason) }
        switch type {
        case 1:
            guard let clock = WorldClock(rawValue: try r.u8()) else { throw bad("unknown clock") }
            return .clock(clock, try r.u64())
        case 2:
            return .random(Array(try r.raw(r.bytes.endIndex - r.offset)))
        case 3:
            let listener = ListenerID(Int(try r.u32()))
            return .accept(listener, try result(&r, bad) { r in ConnectionID(try r.u64()) })
        case 4:
            let connection = ConnectionID(try r.u64())
            return .receive(connection, try result(&r, bad) { r in Array(try r.raw(r.bytes.endIndex - r.offset)) })
        case 5:
            let connection = ConnectionID(try r.u64())
            let offered = try r.u32()
            let digest = try r.u32()
            return .send(connection, offered: offered, digest: digest, result: try result(&r, bad) { r in Int(try r.u32()) })
        case 6:
            let connection = ConnectionID(try r.u64())
            let how = try r.u8()
            guard how & ~3 == 0 else { throw bad("unknown shutdown flags") }
            return .shutdown(connection, reading: how & 1 != 0, writing: how & 2 != 0)
        case 7:
            return .closeConnection(ConnectionID(try r.u64()))
        case 8:
            return .closeListener(ListenerID(Int(try r.u32())))
        case 9:
            let interests = try r.u32()
            switch try r.u8() {
            case 0:
                let count = try r.u32()
                guard count <= interests else { throw bad("more ready descriptors than interests") }
                var ready: [PollReadiness] = []
                for _ in 0..<count {
                    let index = try r.u32()
                    let flags = try r.u8()
                    guard index < interests, flags & ~7 == 0 else { throw bad("a readiness outside the interests") }
                    ready.append(.init(interest: Int(index), readable: flags & 1 != 0, writable: flags & 2 != 0, hangup: flags & 4 != 0))
                }
                return .poll(interests: interests, .ready(ready))
            case 1: return .poll(interests: interests, .timedOut)
            case 2: return .poll(interests: interests, .interrupted)
            case 3: return .poll(interests: interests, .failed(errno: Int32(bitPattern: try r.u32())))
            default: throw bad("unknown poll outcome")
            }
        case 10:
            guard let stream = ConsoleStream(rawValue: try r.u8()) else { throw bad("unknown console stream") }
            return .console(stream, length: try r.u32(), digest: try r.u32())
        case 11:
            return .suspended(hostCalls: try r.u32())
        default:
            throw bad("unknown entry type \(type)")
        }
    }

    private static func result<Value>(
        _ r: inout ByteReader, _ bad: (String) -> EventLogError, _ value: (inout ByteReader) throws -> Value
    ) throws -> WorldResult<Value> {
        switch try r.u8() {
        case 0: return .done(try value(&r))
        case 1: return .wouldBlock
        case 2: return .failed(errno: Int32(bitPattern: try r.u32()))
        default: throw bad("unknown result tag")
        }
    }
}
