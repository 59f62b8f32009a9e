#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Logging
import NIOCore
import NIOPosix
import UnderstudyCore

/// How often each side sends a heartbeat, and how long a silence means the peer is gone.
public struct HeartbeatTiming: Sendable {
    public var interval: TimeAmount
    public var timeout: TimeAmount

    public init(interval: TimeAmount, timeout: TimeAmount) {
        precondition(interval > .zero && timeout > interval, "the heartbeat timeout must exceed its interval")
        self.interval = interval
        self.timeout = timeout
    }

    /// Loopback and LAN defaults: a beat every 10 ms costs ~2 kB/s; 100 ms of silence is ten
    /// missed beats, far beyond the event loop's scheduling delays under load.
    public static let standard = HeartbeatTiming(interval: .milliseconds(10), timeout: .milliseconds(100))
}

/// The backup's side: answers a primary's hello with `welcome` or a `refusal` (and closes) —
/// `admit` may refuse for reasons of its own, such as already protecting another primary —
/// then hands every later message to `onMessage`, and the end of a welcomed connection
/// (closed by the peer, by a bad frame or by silence) to `onClose`, on the channel's event loop.
public final class ReplicationListener: Sendable {
    /// A peer that keeps its connection alive (heartbeats count as life) but never says hello
    /// would hold one of the listener's few places for ever: it has this long to be welcomed.
    public static let handshakePatience = TimeAmount.seconds(5)
    public let localAddress: SocketAddress
    private let channel: Channel

    public static func bind(
        _ address: ServiceAddress, security: ReplicationSecurity, group: EventLoopGroup, logger: Logger,
        heartbeat: HeartbeatTiming = .standard, fencing: FencingToken = FencingToken(),
        handshakePatience: TimeAmount = ReplicationListener.handshakePatience,
        admit: @escaping @Sendable (WireMessage.Hello, Channel) -> String? = { _, _ in nil },
        onMessage: @escaping @Sendable (WireMessage, Channel) -> Void = { _, _ in },
        onClose: @escaping @Sendable (Channel) -> Void = { _ in }
    ) async throws -> ReplicationListener {
        let open = OpenConnections()
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { child in
                guard open.admit() else {
                    logger.warning(
                        "refusing a replication connection: too many open",
                        metadata: ["peer": "\(child.remoteAddress.map { "\($0)" } ?? "?")", "open": "\(OpenConnections.limit)"])
                    return child.close()
                }
                child.closeFuture.whenComplete { _ in open.release() }
                return child.eventLoop.makeCompletedFuture {
                    try security.addServerHandlers(to: child.pipeline.syncOperations, logger: logger)
                    try child.pipeline.syncOperations.addHandler(WireFrameHandler(logger: logger, fencing: fencing, refusingOlder: true))
                    try child.pipeline.syncOperations.addHandler(
                        HeartbeatHandler(timing: heartbeat, logger: logger))
                    try child.pipeline.syncOperations.addHandler(
                        BackupHandshakeHandler(
                            logger: logger, patience: handshakePatience, admit: admit, onMessage: onMessage, onClose: onClose))
                }
            }
        let channel: Channel
        do {
            channel = try await bootstrap.bind(host: address.host, port: Int(address.port)).get()
        } catch let error as IOError {
            throw ReplicationBindError(address: address, reason: String(cString: strerror(error.errnoCode)))
        }
        guard let local = channel.localAddress else { throw ChannelError.unknownLocalAddress }
        return ReplicationListener(channel: channel, localAddress: local)
    }

    private init(channel: Channel, localAddress: SocketAddress) {
        self.channel = channel
        self.localAddress = localAddress
    }

    public func close() async throws { try await channel.close() }
}

/// Connections a listener holds at once. One primary is served at a time; the rest are peers
/// waiting for their handshake, each closed by the heartbeat timeout if it says nothing, so a
/// small number is plenty and a stranger opening thousands costs a log line each, not memory.
final class OpenConnections: @unchecked Sendable {
    static let limit = 16
    private let lock = NSLock()
    private var count = 0

    func admit() -> Bool {
        lock.withLock {
            guard count < Self.limit else { return false }
            count += 1
            return true
        }
    }

    func release() { lock.withLock { count -= 1 } }
}

/// The replication address could not be bound, named with the system's reason.
public struct ReplicationBindError: Error, CustomStringConvertible {
    public let address: ServiceAddress
    public let reason: String
    public var description: String { "cannot listen for a primary on \(address): \(reason)" }
}

/// Answers the first message of a connection; passes the rest on once welcomed.
final class BackupHandshakeHandler: ChannelInboundHandler {
    typealias InboundIn = WireMessage
    typealias OutboundOut = WireMessage

    private let logger: Logger
    private let admit: @Sendable (WireMessage.Hello, Channel) -> String?
    private let onMessage: @Sendable (WireMessage, Channel) -> Void
    private let onClose: @Sendable (Channel) -> Void
    private var welcomed = false
    private var deadline: Scheduled<Void>?
    private let patience: TimeAmount

    init(
        logger: Logger, patience: TimeAmount, admit: @escaping @Sendable (WireMessage.Hello, Channel) -> String?,
        onMessage: @escaping @Sendable (WireMessage, Channel) -> Void, onClose: @escaping @Sendable (Channel) -> Void
    ) {
        self.logger = logger
        self.patience = patience
        self.admit = admit
        self.onMessage = onMessage
        self.onClose = onClose
    }

    /// What was read together with the end of the connection can still be delivered after this
    /// (TLS hands over the plaintext it held): those are the peer's last words — a goodbye, say —
    /// and must be heard before the close is judged, so the close is reported a turn later.
    func handlerAdded(context: ChannelHandlerContext) {
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        deadline = context.eventLoop.scheduleTask(in: patience) { [patience] in
            let (handler, context) = loopBound.value
            guard !handler.welcomed else { return }
            handler.refuse("no hello within \(patience.nanoseconds / 1_000_000) ms", context)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        deadline?.cancel()
        if welcomed {
            let (channel, onClose) = (context.channel, onClose)
            context.eventLoop.execute { onClose(channel) }
        }
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let message = unwrapInboundIn(data)
        if welcomed { return onMessage(message, context.channel) }
        guard case .hello(let hello) = message else { return refuse("expected a hello, got \(message.kind)", context) }
        if let reason = Handshake.refusal(of: hello) ?? admit(hello, context.channel) { return refuse(reason, context) }
        welcomed = true
        deadline?.cancel()
        context.triggerUserOutboundEvent(WireHandshakeDone(for: hello), promise: nil)
        logger.notice(
            "primary connected",
            metadata: ["mode": "\(hello.mode)", "module": "\(hello.moduleHash.prefix(16))"])
        context.writeAndFlush(wrapOutboundOut(.welcome), promise: nil)
    }

    private func refuse(_ reason: String, _ context: ChannelHandlerContext) {
        logger.warning("refusing a primary", metadata: ["reason": "\(reason)"])
        context.channel.close(after: .refusal(reason))
    }
}

public enum ReplicationConnectError: Error, CustomStringConvertible, Equatable {
    case refused(String)
    case closedDuringHandshake
    case tls(String)

    public var description: String {
        switch self {
        case .refused(let reason): return "the backup refused: \(reason)"
        case .closedDuringHandshake: return "the backup closed the connection during the handshake"
        case .tls(let reason): return "the TLS handshake with the backup failed: \(reason)"
        }
    }
}

/// The primary's side: connects, says hello, and returns the channel once welcomed.
public enum ReplicationConnector {
    /// Frames carry `fencing`'s generation as it is when each is written.
    public static func connect(
        to address: ServiceAddress, hello: WireMessage.Hello, security: ReplicationSecurity, group: EventLoopGroup,
        logger: Logger, heartbeat: HeartbeatTiming = .standard, fencing: FencingToken = FencingToken()
    ) async throws -> Channel {
        let channel = try await ClientBootstrap(group: group)
            .channelOption(.socketOption(.so_keepalive), value: 1)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .connect(host: address.host, port: Int(address.port)).get()
        let answer = channel.eventLoop.makePromise(of: Void.self)
        try await channel.eventLoop.submit {
            try security.addClientHandlers(to: channel.pipeline.syncOperations)
            try channel.pipeline.syncOperations.addHandler(WireFrameHandler(logger: logger, fencing: fencing, refusingOlder: false))
            try channel.pipeline.syncOperations.addHandler(
                HeartbeatHandler(timing: heartbeat, logger: logger))
            try channel.pipeline.syncOperations.addHandler(PrimaryHandshakeHandler(answer: answer, hello: hello))
        }.get()
        channel.writeAndFlush(WireMessage.hello(hello), promise: nil)
        do {
            try await answer.futureResult.get()
        } catch {
            try? await channel.close()
            throw error
        }
        return channel
    }
}

/// Waits for the backup's answer to the hello.
final class PrimaryHandshakeHandler: ChannelInboundHandler {
    typealias InboundIn = WireMessage

    private var answer: EventLoopPromise<Void>?
    /// What this side said: the backup's frames are bounded by the same machine.
    private let hello: WireMessage.Hello

    init(answer: EventLoopPromise<Void>, hello: WireMessage.Hello) {
        self.answer = answer
        self.hello = hello
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard let answer else { return context.fireChannelRead(data) }
        self.answer = nil
        switch unwrapInboundIn(data) {
        case .welcome:
            context.triggerUserOutboundEvent(WireHandshakeDone(for: hello), promise: nil)
            answer.succeed()
        case .refusal(let reason): answer.fail(ReplicationConnectError.refused(reason))
        case let other: answer.fail(ReplicationConnectError.refused("expected welcome, got \(other.kind)"))
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        answer?.fail(ReplicationConnectError.closedDuringHandshake)
        answer = nil
        context.fireChannelInactive()
    }

    /// A TLS handshake the backup refused (or whose certificate this side refused) says why.
    func errorCaught(context: ChannelHandlerContext, error: Error) {
        answer?.fail(ReplicationConnectError.tls("\(error)"))
        answer = nil
        context.fireErrorCaught(error)
    }
}
