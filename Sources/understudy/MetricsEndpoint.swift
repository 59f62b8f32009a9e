import Metrics
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus
import UnderstudyCore

/// `--metrics HOST:PORT`: every swift-metrics value the process records (suspension pauses,
/// checkpoint capture time and pages, and in issue 4 the replication figures) served in the
/// Prometheus text format at `GET /metrics`.
final class MetricsEndpoint {
    private let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    private let channel: Channel

    /// Bootstraps the metrics system (once per process) and starts serving.
    init(address: ServiceAddress) throws {
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        do {
            channel = try ServerBootstrap(group: group)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                        try channel.pipeline.syncOperations.addHandler(MetricsRequestHandler(registry: registry))
                    }
                }
                .bind(host: address.host, port: Int(address.port)).wait()
        } catch {
            try? group.syncShutdownGracefully()
            throw MetricsEndpointError.cannotListen("\(address): \(error)")
        }
    }

    func close() {
        try? channel.close().wait()
        try? group.syncShutdownGracefully()
    }
}

enum MetricsEndpointError: Error, CustomStringConvertible {
    case cannotListen(String)
    var description: String {
        switch self {
        case .cannotListen(let reason): return "cannot serve metrics on \(reason)"
        }
    }
}

private final class MetricsRequestHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let registry: PrometheusCollectorRegistry
    private var path: String?

    init(registry: PrometheusCollectorRegistry) { self.registry = registry }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head): path = head.uri
        case .body: break
        case .end:
            var body: [UInt8] = []
            let status: HTTPResponseStatus
            if path == "/metrics" {
                registry.emit(into: &body)
                status = .ok
            } else {
                body = Array("the metrics are at /metrics\n".utf8)
                status = .notFound
            }
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: status == .ok ? "text/plain; version=0.0.4" : "text/plain")
            headers.add(name: "Content-Length", value: "\(body.count)")
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: body)))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
            path = nil
        }
    }
}
