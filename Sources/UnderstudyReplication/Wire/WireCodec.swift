import NIOCore
import UnderstudyCore

/// Frames on the replication connection: `sequence u64 | generation u64 | type u8 | length u32 |
/// header CRC-32C | payload | payload CRC-32C`. The generation is the sender's fencing token
/// (DESIGN.md, "One primary"): a backup refuses frames older than the generation it knows. The header has its own checksum so that a damaged length is caught
/// before the receiver waits for bytes that will never come. Sequence numbers count the frames
/// one side has sent, from 0, so a lost, repeated or reordered frame is caught where it arrives.
/// What a frame may carry before the handshake is done: a hello, a welcome, a refusal. A peer
/// that has not been welcomed cannot make the other side buffer more than this.
public enum WireLimits {
    public static let handshakePayloadMax = 4096
    /// What the 32-bit length can say.
    public static let streamPayloadMax = Int(UInt32.max)
    /// What a hello may declare (the module preparer refuses modules far smaller).
    public static let moduleBytesMax: UInt64 = 256 << 20
    public static let memoryLimitMax: UInt64 = 1 << 32

    /// After the handshake: the largest frame the protocol legitimately carries for the machine
    /// the hello describes. The module frame is its module and configuration (a few KiB of
    /// JSON); the largest of the rest is a checkpoint or a patch of the whole memory, a few
    /// words per page and block beyond it (a quarter bounds them), or a sync's block hashes
    /// (an eighth of memory at the smallest block); a log batch is 256 KiB plus one entry,
    /// which a guest's buffer in that memory bounds.
    public static func streamPayloadMax(for hello: WireMessage.Hello) -> Int {
        let bound = max(hello.moduleBytes + (1 << 20), hello.memoryLimitBytes + hello.memoryLimitBytes / 4 + (16 << 20))
        return Int(min(bound, UInt64(streamPayloadMax)))
    }
}

public enum WireCodec {
    /// 5: frames and the hello carry the generation; the `protecting` marker. 6: the hello
    /// declares the module's size and the machine's memory limit, which bound every frame;
    /// `handover` and `takingOver`, a planned migration.
    public static let protocolVersion: UInt16 = 7
    static let headerBytes = 8 + 8 + 1 + 4 + 4
    static let trailerBytes = 4

    public static func encode(_ message: WireMessage, sequence: UInt64, generation: UInt64 = 0) -> [UInt8] {
        let frame = encodeFrame(message, sequence: sequence, generation: generation)
        var bytes = frame.head
        bytes += frame.tail
        withUnsafeBytes(of: frame.payloadCRC.littleEndian) { bytes.append(contentsOf: $0) }
        return bytes
    }

    /// A frame in three parts — header with the payload's small fields, the payload's large
    /// tail as the message holds it (checkpoint, log records, module), the payload CRC — so the
    /// tail is copied once, into the socket's buffer, not once per layer.
    public struct Frame {
        public var head: [UInt8]
        public var tail: [UInt8]
        public var payloadCRC: UInt32
        public var byteCount: Int { head.count + tail.count + trailerBytes }
    }

    public static func encodeFrame(_ message: WireMessage, sequence: UInt64, generation: UInt64 = 0) -> Frame {
        var small = ByteWriter()
        let (type, tail) = encodePayload(message, into: &small)
        var head = header(type: type, payloadBytes: small.bytes.count + tail.count, sequence: sequence, generation: generation)
        let smallCRC = small.bytes.withUnsafeBytes { CRC32C.checksum($0) }
        let payloadCRC = tail.withUnsafeBytes { CRC32C.checksum($0, continuing: smallCRC) }
        head.raw(small.bytes)
        return Frame(head: head.bytes, tail: tail, payloadCRC: payloadCRC)
    }

    /// A frame's header: sequence, generation, type, payload length, and their CRC.
    static func header(type: UInt8, payloadBytes: Int, sequence: UInt64, generation: UInt64) -> ByteWriter {
        var head = ByteWriter()
        head.u64(sequence)
        head.u64(generation)
        head.u8(type)
        head.u32(UInt32(payloadBytes))
        head.u32(head.bytes.withUnsafeBytes { CRC32C.checksum($0) })
        return head
    }

    /// `message` with its payload encoded into one buffer and checksummed now, on the calling
    /// thread: the event loop then only writes a header before it and the CRC after it.
    public static func encoded(_ message: WireMessage, allocator: ByteBufferAllocator) -> WireMessage {
        if case .encoded = message { return message }
        var small = ByteWriter()
        let (type, tail) = encodePayload(message, into: &small)
        var payload = allocator.buffer(capacity: small.bytes.count + tail.count)
        payload.writeBytes(small.bytes)
        payload.writeBytes(tail)
        let crc = payload.withUnsafeReadableBytes { CRC32C.checksum($0) }
        return .encoded(.init(kind: message.kind, type: type, payload: payload, crc: crc))
    }

    /// How many payload bytes `message` puts on the wire (the replicated-bytes metrics): its frame
    /// less the fixed 29 bytes of header and trailer.
    public static func payloadBytes(_ message: WireMessage) -> Int {
        if case .encoded(let encoded) = message { return encoded.payload.readableBytes }  // no copy to count it
        var small = ByteWriter()
        let (_, tail) = encodePayload(message, into: &small)
        return small.bytes.count + tail.count
    }

    /// Writes the payload's small fields into `w`; returns the frame type and the large tail.
    private static func encodePayload(_ message: WireMessage, into w: inout ByteWriter) -> (UInt8, [UInt8]) {
        switch message {
        case .encoded(let encoded):
            return (encoded.type, Array(encoded.payload.readableBytesView))
        case .hello(let hello):
            w.u16(hello.protocolVersion)
            w.u8(hello.mode.rawValue)
            w.string(hello.moduleHash)
            w.u64(hello.generation)
            w.string(hello.machine)
            w.u64(hello.moduleBytes)
            w.u64(hello.memoryLimitBytes)
            return (1, [])
        case .welcome:
            return (2, [])
        case .refusal(let reason):
            return (3, Array(reason.utf8))
        case .module(let bytes, let configuration):
            w.u32(UInt32(configuration.count))
            w.raw(configuration)
            return (4, bytes)
        case .checkpoint(let epoch, let bytes):
            w.u64(epoch)
            return (5, bytes)
        case .logRecords(let first, let bytes):
            w.u64(first)
            return (6, bytes)
        case .compressedCheckpoint(let epoch, let encoding, let size, let bytes):
            w.u64(epoch)
            w.u8(encoding.rawValue)
            w.u32(size)
            return (10, bytes)
        case .checkpointApplied(let epoch):
            w.u64(epoch)
            return (7, [])
        case .logHeld(let position):
            w.u64(position)
            return (8, [])
        case .heartbeat:
            return (9, [])
        case .syncPoint(let point):
            w.u64(point.sync)
            w.u64(point.position)
            w.u32(point.dirtyPages)
            w.u64(point.digest)
            w.u16(point.blockSize)
            w.u8(point.wholeState == nil ? 0 : 1)
            w.u64(point.wholeState ?? 0)
            return (11, [])
        case .syncMatched(let sync):
            w.u64(sync)
            return (12, [])
        case .syncDiffers(let sync, let blockSize, let stateDigest, let hashes):
            w.u64(sync)
            w.u16(blockSize)
            w.u64(stateDigest)
            return (13, hashes)
        case .syncRepair(let sync, let repair):
            w.u64(sync)
            w.u8(repair.encoding.rawValue)
            w.u32(repair.size)
            return (14, repair.bytes)
        case .blockCheckpoint(let epoch, let patch):
            w.u64(epoch)
            w.u8(patch.encoding.rawValue)
            w.u32(patch.size)
            return (15, patch.bytes)
        case .protecting(let generation, let position):
            w.u64(generation)
            w.u64(position)
            return (16, [])
        case .handover(let generation, let position):
            w.u64(generation)
            w.u64(position)
            return (17, [])
        case .takingOver(let generation):
            w.u64(generation)
            return (18, [])
        }
    }

    static func decodePayload(type: UInt8, _ payload: ArraySlice<UInt8>) throws(WireError) -> WireMessage {
        var r = ByteReader(payload)
        let message: WireMessage
        do {
            switch type {
            case 1:
                let version = try r.u16()
                guard let mode = ReplicationMode(rawValue: try r.u8()) else { throw WireError.malformed("hello names an unknown mode") }
                let hash = try r.string()
                let generation = try r.u64()
                let machine = try r.string()
                message = .hello(
                    .init(
                        protocolVersion: version, mode: mode, moduleHash: hash, generation: generation, machine: machine,
                        moduleBytes: try r.u64(), memoryLimitBytes: try r.u64()))
            case 2: message = .welcome
            case 3: message = .refusal(String(decoding: try r.raw(payload.count), as: UTF8.self))
            case 4:
                let configuration = Array(try r.raw(Int(try r.u32())))
                message = .module(bytes: Array(try r.raw(payload.count - 4 - configuration.count)), configuration: configuration)
            case 5:
                let epoch = try r.u64()
                message = .checkpoint(epoch: epoch, bytes: Array(try r.raw(payload.count - 8)))
            case 6:
                let first = try r.u64()
                message = .logRecords(first: first, bytes: Array(try r.raw(payload.count - 8)))
            case 10:
                let epoch = try r.u64()
                guard let encoding = BlockEncoding(rawValue: try r.u8()) else { throw WireError.malformed("unknown block encoding") }
                let size = try r.u32()
                message = .compressedCheckpoint(epoch: epoch, encoding: encoding, size: size, bytes: Array(try r.raw(payload.count - 13)))
            case 7: message = .checkpointApplied(epoch: try r.u64())
            case 8: message = .logHeld(position: try r.u64())
            case 9: message = .heartbeat
            case 11:
                let (sync, position, pages, digest) = (try r.u64(), try r.u64(), try r.u32(), try r.u64())
                let blockSize = try r.u16()
                guard SyncBlockSize.allowed.contains(Int(blockSize)) else { throw WireError.malformed("a sync point's block size is \(blockSize)") }
                let verifies = try r.u8()
                let whole = try r.u64()
                guard verifies <= 1 else { throw WireError.malformed("a sync point's verification flag is \(verifies)") }
                message = .syncPoint(
                    SyncPoint(sync: sync, position: position, dirtyPages: pages, digest: digest, blockSize: blockSize, wholeState: verifies == 1 ? whole : nil))
            case 12: message = .syncMatched(sync: try r.u64())
            case 13:
                let (sync, blockSize, stateDigest) = (try r.u64(), try r.u16(), try r.u64())
                message = .syncDiffers(sync: sync, blockSize: blockSize, stateDigest: stateDigest, hashes: Array(try r.raw(payload.count - 18)))
            case 14, 15:
                let number = try r.u64()
                guard let encoding = BlockEncoding(rawValue: try r.u8()) else { throw WireError.malformed("unknown block encoding") }
                let packed = PackedBytes(encoding: encoding, size: try r.u32(), bytes: Array(try r.raw(payload.count - 13)))
                message = type == 14 ? .syncRepair(sync: number, repair: packed) : .blockCheckpoint(epoch: number, patch: packed)
            case 16: message = .protecting(generation: try r.u64(), position: try r.u64())
            case 17: message = .handover(generation: try r.u64(), position: try r.u64())
            case 18: message = .takingOver(generation: try r.u64())
            default: throw WireError.unknownType(type)
            }
        } catch let error as WireError {
            throw error
        } catch {
            throw .malformed("a \(Self.name(of: type)) frame is too short")
        }
        guard r.isAtEnd else { throw .malformed("a \(message.kind) frame has trailing bytes") }
        return message
    }

    private static let typeNames = [
        "hello", "welcome", "refusal", "module", "checkpoint", "log records", "checkpoint applied", "log held", "heartbeat",
        "compressed checkpoint", "sync point", "sync matched", "sync differs", "sync repair", "block checkpoint", "protecting",
        "handover", "taking over",
    ]

    private static func name(of type: UInt8) -> String {
        (1...typeNames.count).contains(Int(type)) ? typeNames[Int(type) - 1] : "type \(type)"
    }
}

public enum WireError: Error, Equatable, CustomStringConvertible {
    case corruptHeader(sequence: UInt64)
    case corruptFrame(sequence: UInt64)
    case outOfOrder(expected: UInt64, found: UInt64)
    case unknownType(UInt8)
    case tooLarge(bytes: UInt64, limit: Int)
    case malformed(String)
    /// A frame of a generation older than the receiver knows: from a fenced-off primary.
    case staleGeneration(found: UInt64, known: UInt64)

    public var description: String {
        switch self {
        case .corruptHeader(let sequence): return "the header of frame \(sequence) fails its checksum"
        case .corruptFrame(let sequence): return "frame \(sequence) fails its checksum"
        case .outOfOrder(let expected, let found): return "frame \(found) arrived where frame \(expected) was due"
        case .unknownType(let type): return "unknown frame type \(type)"
        case .tooLarge(let bytes, let limit): return "a frame of \(bytes) bytes exceeds the limit of \(limit)"
        case .malformed(let reason): return "malformed frame: \(reason)"
        case .staleGeneration(let found, let known): return "a frame of generation \(found), older than generation \(known)"
        }
    }
}

/// Reassembles frames from the byte stream as it arrives, in any pieces. The first bad frame
/// throws, and the decoder then refuses everything: the connection is to be closed, and nothing
/// decoded after the damage is ever handed on.
public struct WireDecoder: Sendable {
    /// Bounds what one frame can make the receiver buffer; checked on the header, before any of
    /// the payload is kept. The connection raises it once the handshake is done.
    public var maximumPayload: Int
    /// Frames of an older generation are refused (a backup sets it to the newest it knows).
    public var minimumGeneration: UInt64 = 0
    /// Bytes received and not yet handed on start at `consumed`: a frame decoded moves an index,
    /// not the bytes after it (the rest moves to the front once per read, in `append`).
    private var buffered: [UInt8] = []
    private var consumed = 0
    private var expected: UInt64 = 0
    private var failure: WireError?
    /// Above this, an emptied buffer lets its memory go (a seed's part, a module) rather than keep it.
    private static let keptCapacity = 1 << 20

    public init(maximumPayload: Int = WireLimits.streamPayloadMax) {
        self.maximumPayload = maximumPayload
    }

    public mutating func append<Bytes: Sequence>(_ bytes: Bytes) where Bytes.Element == UInt8 {
        compact()
        buffered.append(contentsOf: bytes)
    }

    /// What is still buffered, for tests: the bytes of frames not yet whole, and the memory kept.
    public var buffer: (bytes: Int, capacity: Int) { (buffered.count - consumed, buffered.capacity) }

    /// The next whole frame, nil until one has arrived.
    public mutating func next() throws(WireError) -> WireMessage? {
        if let failure { throw failure }
        do {
            return try decodeNext()
        } catch {
            failure = error
            buffered = []
            consumed = 0
            throw error
        }
    }

    private mutating func compact() {
        guard consumed > 0 else { return }
        if consumed == buffered.count {
            if buffered.capacity > Self.keptCapacity { buffered = [] } else { buffered.removeAll(keepingCapacity: true) }
        } else {
            buffered.removeFirst(consumed)
        }
        consumed = 0
    }

    private mutating func decodeNext() throws(WireError) -> WireMessage? {
        let start = consumed
        guard buffered.count - start >= WireCodec.headerBytes else { return nil }
        let (sequence, generation, type, length, headerCRC, headerComputed) = buffered.withUnsafeBytes { bytes in
            let header = UnsafeRawBufferPointer(rebasing: bytes[start..<start + WireCodec.headerBytes])
            return (
                UInt64(littleEndian: header.loadUnaligned(fromByteOffset: 0, as: UInt64.self)),
                UInt64(littleEndian: header.loadUnaligned(fromByteOffset: 8, as: UInt64.self)), header[16],
                UInt32(littleEndian: header.loadUnaligned(fromByteOffset: 17, as: UInt32.self)),
                UInt32(littleEndian: header.loadUnaligned(fromByteOffset: 21, as: UInt32.self)),
                CRC32C.checksum(UnsafeRawBufferPointer(rebasing: header[..<(WireCodec.headerBytes - 4)])))
        }
        guard headerCRC == headerComputed else { throw .corruptHeader(sequence: expected) }
        guard sequence == expected else { throw .outOfOrder(expected: expected, found: sequence) }
        guard generation >= minimumGeneration else { throw .staleGeneration(found: generation, known: minimumGeneration) }
        guard Int(length) <= maximumPayload else { throw .tooLarge(bytes: UInt64(length), limit: maximumPayload) }
        let total = WireCodec.headerBytes + Int(length) + WireCodec.trailerBytes
        guard buffered.count - start >= total else {
            // Grown once to the frame's size, not doubled as it arrives: copying a large seed
            // over and over would hold up the event loop that judges the peer's liveness.
            compact()
            if buffered.capacity < total { buffered.reserveCapacity(total) }
            return nil
        }
        let end = start + total
        let (stored, computed) = buffered.withUnsafeBytes { bytes in
            (
                UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: end - 4, as: UInt32.self)),
                CRC32C.checksum(UnsafeRawBufferPointer(rebasing: bytes[(start + WireCodec.headerBytes)..<(end - 4)]))
            )
        }
        guard stored == computed else { throw .corruptFrame(sequence: expected) }
        let message = try WireCodec.decodePayload(type: type, buffered[(start + WireCodec.headerBytes)..<(end - 4)])
        consumed = end
        expected += 1
        return message
    }
}

/// Numbers the frames one side sends.
public struct WireEncoder: Sendable {
    public private(set) var sent: UInt64 = 0
    /// Stamped on every frame: the generation the sender holds or knows.
    public var generation: UInt64 = 0

    public init() {}

    public mutating func encode(_ message: WireMessage) -> [UInt8] {
        defer { sent += 1 }
        return WireCodec.encode(message, sequence: sent, generation: generation)
    }

    public mutating func encodeFrame(_ message: WireMessage) -> WireCodec.Frame {
        defer { sent += 1 }
        return WireCodec.encodeFrame(message, sequence: sent, generation: generation)
    }

    /// The header of the frame that carries `encoded`'s payload.
    public mutating func encodeHeader(_ encoded: WireMessage.EncodedPayload) -> [UInt8] {
        defer { sent += 1 }
        return WireCodec.header(type: encoded.type, payloadBytes: encoded.payload.readableBytes, sequence: sent, generation: generation).bytes
    }
}
