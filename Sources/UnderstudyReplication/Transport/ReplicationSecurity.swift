import Logging
import NIOCore
import NIOSSL
import NIOTLS

/// How the replication connection is protected (DESIGN.md, "Replication"). With mutual TLS each
/// side presents a certificate the configured authority signed and checks the other's against
/// it: a peer without one is refused during the TLS handshake, before any frame is parsed.
/// Hostnames are not checked: hosts are addresses, and holding a certificate of this authority is
/// what makes a peer a member of the pair. `insecure` is plain TCP, for a pair the operator
/// chooses to trust (and tests of other things).
public enum ReplicationSecurity: Sendable {
    case insecure
    case mutualTLS(MutualTLS)

    public struct MutualTLS: Sendable {
        /// How long a closing side waits for its peer's close_notify before closing anyway.
        static let shutdownTimeout = TimeAmount.milliseconds(1)

        let server: NIOSSLContext
        let client: NIOSSLContext

        /// PEM files: this side's certificate (chain) and key, and the authority peers must be signed by.
        public init(certificate: String, key: String, authority: String) throws(ReplicationSecurityError) {
            let chain: [NIOSSLCertificate]
            let privateKey: NIOSSLPrivateKey
            let roots: [NIOSSLCertificate]
            do { chain = try NIOSSLCertificate.fromPEMFile(certificate) } catch {
                throw .unreadable(flag: "--tls-cert", path: certificate, reason: "\(error)")
            }
            do { privateKey = try NIOSSLPrivateKey(file: key, format: .pem) } catch {
                throw .unreadable(flag: "--tls-key", path: key, reason: "\(error)")
            }
            do { roots = try NIOSSLCertificate.fromPEMFile(authority) } catch {
                throw .unreadable(flag: "--tls-ca", path: authority, reason: "\(error)")
            }
            guard !chain.isEmpty else { throw .unreadable(flag: "--tls-cert", path: certificate, reason: "no certificate in it") }
            guard !roots.isEmpty else { throw .unreadable(flag: "--tls-ca", path: authority, reason: "no certificate in it") }
            var serverConfiguration = TLSConfiguration.makeServerConfigurationWithMTLS(
                certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(privateKey), trustRoots: .certificates(roots))
            serverConfiguration.minimumTLSVersion = .tlsv13
            // A connection is closed outright when its peer is judged gone (silent, or still
            // open when a refusal's linger ends; `close(after:)` shuts the output first): waiting
            // for the peer's close_notify (5 s by default) would keep a paused primary's
            // connection open, and the backup's claim behind it, until the primary resumed.
            serverConfiguration.shutdownTimeout = Self.shutdownTimeout
            var clientConfiguration = TLSConfiguration.makeClientConfiguration()
            clientConfiguration.certificateChain = chain.map { .certificate($0) }
            clientConfiguration.privateKey = .privateKey(privateKey)
            clientConfiguration.trustRoots = .certificates(roots)
            clientConfiguration.certificateVerification = .noHostnameVerification
            clientConfiguration.minimumTLSVersion = .tlsv13
            clientConfiguration.shutdownTimeout = Self.shutdownTimeout
            do {
                server = try NIOSSLContext(configuration: serverConfiguration)
                client = try NIOSSLContext(configuration: clientConfiguration)
            } catch {
                throw .unusable("\(error)")
            }
        }
    }

    /// The backup's side of a new connection: TLS first, so nothing reaches the frame decoder
    /// from a peer that has not proven itself.
    func addServerHandlers(to pipeline: ChannelPipeline.SynchronousOperations, logger: Logger) throws {
        guard case .mutualTLS(let tls) = self else { return }
        try pipeline.addHandler(NIOSSLServerHandler(context: tls.server))
        try pipeline.addHandler(TLSRefusalLogger(logger: logger))
    }

    /// The primary's side.
    func addClientHandlers(to pipeline: ChannelPipeline.SynchronousOperations) throws {
        guard case .mutualTLS(let tls) = self else { return }
        try pipeline.addHandler(try NIOSSLClientHandler(context: tls.client, serverHostname: nil))
    }
}

public enum ReplicationSecurityError: Error, CustomStringConvertible, Equatable {
    case unreadable(flag: String, path: String, reason: String)
    case unusable(String)

    public var description: String {
        switch self {
        case .unreadable(let flag, let path, let reason): return "cannot load \(flag) \(path): \(reason)"
        case .unusable(let reason): return "the TLS configuration is not usable: \(reason)"
        }
    }
}

/// Says who was refused, and why, when a peer fails the TLS handshake (no certificate, one of
/// another authority, or not TLS at all); NIOSSL closes the connection.
final class TLSRefusalLogger: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    private let logger: Logger
    /// After the handshake, TLS errors are the connection's end (a killed peer sends no
    /// close_notify), not a refusal.
    private var decided = false

    init(logger: Logger) { self.logger = logger }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .handshakeCompleted = event as? TLSUserEvent { decided = true }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if !decided, error is NIOSSLError || error is BoringSSLError {
            decided = true
            logger.warning(
                "refusing a replication peer: TLS handshake failed",
                metadata: ["peer": "\(context.remoteAddress.map { "\($0)" } ?? "?")", "reason": "\(error)"])
        }
        context.fireErrorCaught(error)
    }
}
