import Logging
import NIOCore

/// The bottom of a replication connection's pipeline: bytes in, `WireMessage`s out, and the
/// reverse. The first damaged, reordered, unknown or oversized frame closes the connection with
/// its reason logged; nothing after it reaches the handlers above (DESIGN.md, "Replication").
final class WireFrameHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = WireMessage
    typealias OutboundIn = WireMessage
    typealias OutboundOut = ByteBuffer

    private var decoder: WireDecoder
    private var encoder = WireEncoder()
    private let logger: Logger
    /// Stamped on every frame sent; with `refusingOlder`, the oldest generation taken in.
    private let fencing: FencingToken
    private let refusingOlder: Bool
    /// Past the handshake: the hello's generation is judged by the backup with a reason it says;
    /// only the frames after it are refused for their generation here.
    private var welcomed = false

    /// Starts at the handshake's bound; `WireHandshakeDone`, sent down the pipeline by the
    /// handshake handler, raises it to the stream's.
    init(logger: Logger, fencing: FencingToken, refusingOlder: Bool, maximumPayload: Int = WireLimits.handshakePayloadMax) {
        self.logger = logger
        self.fencing = fencing
        self.refusingOlder = refusingOlder
        decoder = WireDecoder(maximumPayload: maximumPayload)
    }

    func triggerUserOutboundEvent(context: ChannelHandlerContext, event: Any, promise: EventLoopPromise<Void>?) {
        guard let done = event as? WireHandshakeDone else { return context.triggerUserOutboundEvent(event, promise: promise) }
        decoder.maximumPayload = done.maximumPayload
        welcomed = true
        promise?.succeed()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // The peer is alive while its bytes arrive, though a large frame (a seed) may take longer
        // than the heartbeat timeout to arrive whole.
        context.fireUserInboundEventTriggered(WireBytesArrived())
        var buffer = unwrapInboundIn(data)
        if let bytes = buffer.readBytes(length: buffer.readableBytes) { decoder.append(bytes) }
        if refusingOlder && welcomed { decoder.minimumGeneration = fencing.generation }
        do {
            while let message = try decoder.next() { context.fireChannelRead(wrapInboundOut(message)) }
        } catch {
            logger.warning(
                "closing the replication connection",
                metadata: ["peer": "\(context.remoteAddress.map { "\($0)" } ?? "?")", "reason": "\(error)"])
            context.close(promise: nil)
        }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        encoder.generation = fencing.generation
        let message = unwrapOutboundIn(data)
        if case .encoded(let encoded) = message {
            // Encoded and checksummed already, off this loop: a header before it, the CRC after.
            var head = context.channel.allocator.buffer(capacity: WireCodec.headerBytes)
            head.writeBytes(encoder.encodeHeader(encoded))
            var trailer = context.channel.allocator.buffer(capacity: WireCodec.trailerBytes)
            trailer.writeInteger(encoded.crc, endianness: .little)
            context.write(wrapOutboundOut(head), promise: nil)
            context.write(wrapOutboundOut(encoded.payload), promise: nil)
            return context.write(wrapOutboundOut(trailer), promise: promise)
        }
        let frame = encoder.encodeFrame(message)
        var buffer = context.channel.allocator.buffer(capacity: frame.byteCount)
        buffer.writeBytes(frame.head)
        buffer.writeBytes(frame.tail)
        buffer.writeInteger(frame.payloadCRC, endianness: .little)
        context.write(wrapOutboundOut(buffer), promise: promise)
    }
}

/// Fired up the pipeline whenever bytes arrive, before any frame they complete.
struct WireBytesArrived {}

/// Sent down the pipeline once the peer is welcomed: frames may now be as large as the largest
/// the hello's machine can need.
struct WireHandshakeDone {
    let maximumPayload: Int
    init(for hello: WireMessage.Hello) { maximumPayload = WireLimits.streamPayloadMax(for: hello) }
}
