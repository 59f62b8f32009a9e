import Logging
import NIOCore

/// Keeps a replication connection honest about its peer, on both ends: sends a heartbeat every
/// `interval` and closes the connection, with the reason logged, once nothing at all — not a
/// byte — has been heard for `timeout`. A closed connection is how the layers above learn the peer is gone (the
/// backup promotes, the primary continues unprotected), whether the peer's kernel said so at
/// once or the peer just fell silent. Heartbeats are consumed here.
final class HeartbeatHandler: ChannelDuplexHandler {
    typealias InboundIn = WireMessage
    typealias InboundOut = WireMessage
    typealias OutboundIn = WireMessage
    typealias OutboundOut = WireMessage

    private let timing: HeartbeatTiming
    private let logger: Logger
    private var liveness: PeerLiveness?
    private var beat: RepeatedTask?

    init(timing: HeartbeatTiming, logger: Logger) {
        self.timing = timing
        self.logger = logger
    }

    private static var now: UInt64 { NIODeadline.now().uptimeNanoseconds }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { start(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        start(context)
        context.fireChannelActive()
    }

    private func start(_ context: ChannelHandlerContext) {
        guard beat == nil else { return }
        liveness = PeerLiveness(
            intervalNanos: UInt64(timing.interval.nanoseconds), timeoutNanos: UInt64(timing.timeout.nanoseconds), now: Self.now)
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        beat = context.eventLoop.scheduleRepeatedTask(initialDelay: timing.interval, delay: timing.interval) { [self] _ in
            check(loopBound.value)
        }
    }

    private func check(_ context: ChannelHandlerContext) {
        guard var liveness else { return }
        let verdict = liveness.verdict(at: Self.now)
        self.liveness = liveness
        switch verdict {
        case .alive: break
        case .sendHeartbeat:
            context.writeAndFlush(wrapOutboundOut(.heartbeat), promise: nil)
        case .peerSilent(let nanos):
            let reason = "the peer has been silent for \(nanos / 1_000_000) ms"
            logger.warning("closing the replication connection", metadata: ["reason": "\(reason)"])
            beat?.cancel()
            // Said, not only done: a peer that was paused, not dead, reads this when it resumes and
            // knows it was given up (a backup then does not take its closed connection for the
            // primary's death).
            context.writeAndFlush(wrapOutboundOut(.refusal("given up: \(reason)")), promise: nil)
            context.close(promise: nil)
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard event is WireBytesArrived else { return context.fireUserInboundEventTriggered(event) }
        liveness?.heard(at: Self.now)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        liveness?.heard(at: Self.now)
        if case .heartbeat = unwrapInboundIn(data) { return }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        liveness?.sent(at: Self.now)
        context.write(data, promise: promise)
    }

    func channelInactive(context: ChannelHandlerContext) {
        beat?.cancel()
        beat = nil
        context.fireChannelInactive()
    }
}
