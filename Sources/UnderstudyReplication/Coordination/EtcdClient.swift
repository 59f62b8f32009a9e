#if canImport(Glibc)
import Glibc
#endif
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix

/// One etcd member's client address. Only plain HTTP: the JSON gateway over TLS is not supported.
public struct EtcdEndpoint: Sendable, Equatable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    public var description: String { "http://\(authority)" }

    /// HOST:PORT as a URL and an HTTP Host header write it (an IPv6 host in brackets).
    public var authority: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// "http://HOST:PORT" or "HOST:PORT" (an IPv6 host in brackets).
    public static func parse(_ text: String) throws(EtcdEndpointError) -> EtcdEndpoint {
        var rest = Substring(text.trimmingCharacters(in: .whitespaces))
        if let schemeEnd = rest.range(of: "://") {
            let scheme = rest[..<schemeEnd.lowerBound].lowercased()
            guard scheme == "http" else {
                throw EtcdEndpointError(
                    text: text, reason: scheme == "https" ? "https is not supported (only http)" : "scheme '\(scheme)' is not http")
            }
            rest = rest[schemeEnd.upperBound...]
        }
        if rest.hasSuffix("/") { rest = rest.dropLast() }
        guard let colon = rest.lastIndex(of: ":") else { throw EtcdEndpointError(text: text, reason: "no port (expected HOST:PORT)") }
        var host = rest[..<colon]
        let portText = rest[rest.index(after: colon)...]
        if host.hasPrefix("["), host.hasSuffix("]") { host = host.dropFirst().dropLast() }
        guard !host.isEmpty else { throw EtcdEndpointError(text: text, reason: "no host") }
        guard let port = Int(portText), (1...65_535).contains(port) else {
            throw EtcdEndpointError(text: text, reason: "port '\(portText)' is not a number from 1 to 65535")
        }
        return EtcdEndpoint(host: String(host), port: port)
    }

    /// A comma-separated list, as etcdctl's `--endpoints` takes: "http://a:2379,http://b:2379".
    public static func parseList(_ text: String) throws(EtcdEndpointError) -> [EtcdEndpoint] {
        guard !text.trimmingCharacters(in: .whitespaces).isEmpty else {
            throw EtcdEndpointError(text: text, reason: "no etcd endpoints given")
        }
        var endpoints: [EtcdEndpoint] = []
        for item in text.split(separator: ",", omittingEmptySubsequences: false) {
            guard !item.trimmingCharacters(in: .whitespaces).isEmpty else {
                throw EtcdEndpointError(text: text, reason: "an empty endpoint between commas")
            }
            endpoints.append(try parse(String(item)))
        }
        return endpoints
    }
}

public struct EtcdEndpointError: Error, CustomStringConvertible, Equatable {
    public let text: String
    public let reason: String
    public var description: String { "bad etcd endpoint '\(text)': \(reason)" }
}

/// A key as etcd holds it. `version` counts the puts since the key was (re)created: 0 only for
/// a key that does not exist, which is why a put "if version 0" means "if absent".
public struct EtcdKeyValue: Sendable, Equatable {
    public var key: String
    public var value: [UInt8]
    public var version: Int64
    public var modRevision: Int64
    /// 0: attached to no lease.
    public var lease: Int64

    public init(key: String, value: [UInt8], version: Int64, modRevision: Int64, lease: Int64) {
        self.key = key
        self.value = value
        self.version = version
        self.modRevision = modRevision
        self.lease = lease
    }
}

public enum EtcdError: Error, CustomStringConvertible, Equatable {
    /// No endpoint answered; says each endpoint and why.
    case unreachable(String)
    /// An endpoint answered, but not with the gateway's JSON for success.
    case badResponse(String)

    public var description: String {
        switch self {
        case .unreachable(let reasons): "no etcd endpoint answered: \(reasons)"
        case .badResponse(let reason): "a bad answer from etcd: \(reason)"
        }
    }
}

/// An etcd v3 client over its JSON gateway (POST /v3/…), for the rare moments roles change.
/// Each request is one fresh HTTP/1.1 connection (Connection: close), bounded by
/// `requestTimeout` from connect to the last byte, and by `responseBytesMax`. Endpoints are
/// tried in order, starting with the last one that answered; a request therefore takes at most
/// `endpoints.count × requestTimeout`. An endpoint that refuses, times out, drops the connection
/// or answers HTTP 5xx (a member without a leader) did not answer, and the next is tried.
public final class EtcdClient: Sendable {
    public let endpoints: [EtcdEndpoint]
    public let requestTimeout: Duration
    public let responseBytesMax: Int
    private let group: EventLoopGroup
    private let preferred = PreferredEndpoint()

    /// A body of a whole MiB is far beyond any answer about a few role keys; a bigger one is not
    /// a key space this client was built for.
    public static let defaultResponseBytesMax = 1 << 20

    public init(
        endpoints: [EtcdEndpoint], group: EventLoopGroup, requestTimeout: Duration = .seconds(1),
        responseBytesMax: Int = EtcdClient.defaultResponseBytesMax
    ) {
        self.endpoints = endpoints
        self.group = group
        self.requestTimeout = requestTimeout
        self.responseBytesMax = responseBytesMax
    }

    /// The key's current value, nil when absent.
    public func get(_ key: String) async throws(EtcdError) -> EtcdKeyValue? {
        let answer: GatewayRange = try await call("/v3/kv/range", ["key": Self.base64(key)])
        return try answer.keyValues().first
    }

    public enum PutOutcome: Sendable, Equatable {
        case put(newVersion: Int64)
        /// The key's version was not the one asked for; what is there now (nil: absent).
        case conflict(current: EtcdKeyValue?)
    }

    /// One transaction: if the key's version is `version` (0: the key does not exist), put
    /// `value` (attached to `lease` unless 0); otherwise return what is there.
    public func put(_ key: String, value: [UInt8], ifVersion version: Int64, lease: Int64 = 0) async throws(EtcdError)
        -> PutOutcome
    {
        var put: [String: Any] = ["key": Self.base64(key), "value": Data(value).base64EncodedString()]
        if lease != 0 { put["lease"] = String(lease) }
        let request: [String: Any] = [
            "compare": [["key": Self.base64(key), "result": "EQUAL", "target": "VERSION", "version": String(version)]],
            "success": [["request_put": put]],
            "failure": [["request_range": ["key": Self.base64(key)]]],
        ]
        let answer: GatewayTxn = try await call("/v3/kv/txn", request)
        let responses = answer.responses ?? []
        if answer.succeeded ?? false {
            guard responses.first?.response_put != nil else {
                throw .badResponse("a transaction on '\(key)' succeeded without a put response")
            }
            // The compare held, so the put made version N into N+1 atomically.
            return .put(newVersion: version + 1)
        }
        guard let range = responses.first?.response_range else {
            throw .badResponse("a failed transaction on '\(key)' came without the range it asks for")
        }
        let current = try range.keyValues().first
        guard (current?.version ?? 0) != version else {
            throw .badResponse("etcd refused a put on '\(key)' at version \(version) although that is its version")
        }
        return .conflict(current: current)
    }

    /// A new lease of `ttlSeconds` (etcd raises tiny TTLs to its minimum); its ID.
    public func grantLease(ttlSeconds: Int64) async throws(EtcdError) -> Int64 {
        let answer: GatewayLeaseGrant = try await call("/v3/lease/grant", ["TTL": String(ttlSeconds)])
        if let error = answer.error, !error.isEmpty { throw .badResponse("lease grant: \(error)") }
        guard let id = answer.ID?.value, id != 0 else { throw .badResponse("lease grant answered without a lease ID") }
        return id
    }

    /// Renews `lease` once; its remaining TTL in seconds. 0 means the lease has expired or never
    /// existed (the gateway answers so instead of with an error): the caller must register anew.
    public func keepAlive(lease: Int64) async throws(EtcdError) -> Int64 {
        // A streaming call through the gateway: each answer is wrapped in "result" or "error".
        let answer: GatewayKeepAliveStream = try await call("/v3/lease/keepalive", ["ID": String(lease)])
        if let error = answer.error { throw .badResponse("lease keepalive: \(error.text)") }
        guard let result = answer.result else { throw .badResponse("lease keepalive answered without a result") }
        return result.TTL?.value ?? 0
    }

    /// Ends `lease` and deletes its keys. A lease already gone (expired, revoked) is not an
    /// error: what revoking is for has happened.
    public func revoke(lease: Int64) async throws(EtcdError) {
        do {
            // etcd 3.4 serves /v3/kv/lease/revoke too; /v3/lease/revoke is the path later versions keep.
            let _: GatewayHeaderOnly = try await call("/v3/lease/revoke", ["ID": String(lease)])
        } catch .badResponse(let reason) where reason.contains(GatewayStatus.leaseNotFound) {
            return
        }
    }

    /// All keys starting with `prefix`, in key order.
    public func list(prefix: String) async throws(EtcdError) -> [EtcdKeyValue] {
        let answer: GatewayRange = try await call(
            "/v3/kv/range",
            ["key": Self.base64(prefix), "range_end": Data(Self.rangeEnd(ofPrefix: Array(prefix.utf8))).base64EncodedString()])
        return try answer.keyValues()
    }

    /// etcd's range end for a prefix: the prefix with its last byte below 0xff incremented
    /// (bytes of 0xff after it dropped); "\0", every key, when there is no such byte.
    static func rangeEnd(ofPrefix prefix: [UInt8]) -> [UInt8] {
        var end = prefix
        while let last = end.last {
            if last < 0xff {
                end[end.count - 1] = last + 1
                return end
            }
            end.removeLast()
        }
        return [0]
    }

    private static func base64(_ key: String) -> String { Data(key.utf8).base64EncodedString() }

    // MARK: - Trying the endpoints

    private func call<Answer: Decodable>(_ path: String, _ request: [String: Any]) async throws(EtcdError) -> Answer {
        let body: [UInt8]
        do {
            body = Array(try JSONSerialization.data(withJSONObject: request))
        } catch {
            preconditionFailure("a request built here is not JSON: \(error)")
        }
        let answer = try await post(path, body: body)
        do {
            return try JSONDecoder().decode(Answer.self, from: Data(answer.body))
        } catch {
            throw .badResponse("\(answer.endpoint)\(path) answered what is not the gateway's JSON (\(error)): \(answer.excerpt)")
        }
    }

    /// The first endpoint's answer of HTTP 200; any other answer is a `badResponse`.
    private func post(_ path: String, body: [UInt8]) async throws(EtcdError) -> GatewayAnswer {
        guard !endpoints.isEmpty else { throw .unreachable("no etcd endpoints are configured") }
        let first = preferred.index(among: endpoints.count)
        var reasons: [String] = []
        for offset in endpoints.indices {
            let index = (first + offset) % endpoints.count
            let endpoint = endpoints[index]
            let answer: GatewayAnswer
            do {
                answer = try await GatewayExchange.post(
                    path, body: body, to: endpoint, on: group.next(), timeout: TimeAmount(requestTimeout),
                    responseBytesMax: responseBytesMax
                ).get()
            } catch let failure as GatewayExchange.Failure {
                if case .unanswered(let reason) = failure {
                    reasons.append("\(endpoint): \(reason)")
                    continue
                }
                preferred.remember(index)
                throw .badResponse("\(endpoint)\(path): \(failure)")
            } catch {
                reasons.append("\(endpoint): \(error)")
                continue
            }
            if answer.status.code >= 500 {
                reasons.append("\(endpoint): HTTP \(answer.status.code) (\(answer.gatewayMessage))")
                continue
            }
            preferred.remember(index)
            guard answer.status == .ok else {
                throw .badResponse("\(endpoint)\(path) answered HTTP \(answer.status.code): \(answer.gatewayMessage)")
            }
            return answer
        }
        throw .unreachable(reasons.joined(separator: "; "))
    }
}

/// The endpoint that answered last, tried first next time.
private final class PreferredEndpoint: @unchecked Sendable {
    private let lock = NSLock()
    private var index = 0

    func index(among count: Int) -> Int { lock.withLock { index < count ? index : 0 } }
    func remember(_ answered: Int) { lock.withLock { index = answered } }
}

// MARK: - One HTTP exchange

struct GatewayAnswer: Sendable {
    var endpoint: EtcdEndpoint
    var status: HTTPResponseStatus
    var body: [UInt8]

    var excerpt: String { String(decoding: body.prefix(200), as: UTF8.self) }

    /// The gateway's error message (`{"error": …, "message": …, "code": N}`), or the body itself.
    var gatewayMessage: String {
        (try? JSONDecoder().decode(GatewayStatus.self, from: Data(body)))?.text ?? excerpt
    }
}

/// POST one body to one endpoint on a connection of its own, from connect to the end of the
/// answer within `timeout`, the answer's body within `responseBytesMax`.
enum GatewayExchange {
    enum Failure: Error, CustomStringConvertible {
        /// Nothing came back: refused, reset, timed out. The next endpoint may do better.
        case unanswered(String)
        /// Something came back that is not an HTTP answer we take.
        case unacceptable(String)

        var description: String {
            switch self {
            case .unanswered(let reason), .unacceptable(let reason): reason
            }
        }
    }

    static func post(
        _ path: String, body: [UInt8], to endpoint: EtcdEndpoint, on loop: EventLoop, timeout: TimeAmount,
        responseBytesMax: Int
    ) -> EventLoopFuture<GatewayAnswer> {
        let answer = loop.makePromise(of: GatewayAnswer.self)
        let connected = ClientBootstrap(group: loop)
            .connectTimeout(timeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(
                        GatewayAnswerCollector(endpoint: endpoint, answer: answer, responseBytesMax: responseBytesMax))
                }
            }
            .connect(host: endpoint.host, port: endpoint.port)
        let deadline = loop.scheduleTask(in: timeout) {
            answer.fail(Failure.unanswered("timed out after \(timeout.nanoseconds / 1_000_000) ms"))
        }
        connected.whenFailure { answer.fail(Failure.unanswered(connectFailure($0))) }
        connected.whenSuccess { channel in
            var head = HTTPRequestHead(version: .http1_1, method: .POST, uri: path)
            head.headers.add(name: "Host", value: endpoint.authority)
            head.headers.add(name: "Content-Type", value: "application/json")
            head.headers.add(name: "Content-Length", value: String(body.count))
            head.headers.add(name: "Connection", value: "close")
            channel.write(HTTPClientRequestPart.head(head), promise: nil)
            channel.write(HTTPClientRequestPart.body(.byteBuffer(ByteBuffer(bytes: body))), promise: nil)
            channel.writeAndFlush(HTTPClientRequestPart.end(nil)).whenFailure {
                answer.fail(Failure.unanswered("the request could not be sent: \($0)"))
            }
        }
        // Whatever ended the exchange (its answer, the deadline, an error), the connection goes.
        answer.futureResult.whenComplete { _ in
            deadline.cancel()
            connected.whenSuccess { $0.close(promise: nil) }
        }
        return answer.futureResult
    }

    private static func connectFailure(_ error: Error) -> String {
        switch error {
        case let error as NIOConnectionError:
            guard let first = error.connectionErrors.first?.error else { return "\(error)" }
            return connectFailure(first)
        case let error as IOError: return String(cString: strerror(error.errnoCode)).lowercased()
        case ChannelError.connectTimeout(let timeout): return "timed out after \(timeout.nanoseconds / 1_000_000) ms"
        default: return "\(error)"
        }
    }
}

/// Gathers one HTTP response and completes the exchange's promise with it (or with why not).
private final class GatewayAnswerCollector: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart

    private let endpoint: EtcdEndpoint
    private let answer: EventLoopPromise<GatewayAnswer>
    private let responseBytesMax: Int
    private var status: HTTPResponseStatus?
    private var body: [UInt8] = []

    init(endpoint: EtcdEndpoint, answer: EventLoopPromise<GatewayAnswer>, responseBytesMax: Int) {
        self.endpoint = endpoint
        self.answer = answer
        self.responseBytesMax = responseBytesMax
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            status = head.status
        case .body(let buffer):
            guard body.count + buffer.readableBytes <= responseBytesMax else {
                answer.fail(GatewayExchange.Failure.unacceptable("the answer exceeds \(responseBytesMax) bytes"))
                return context.close(promise: nil)
            }
            body.append(contentsOf: buffer.readableBytesView)
        case .end:
            guard let status else { return }
            answer.succeed(GatewayAnswer(endpoint: endpoint, status: status, body: body))
            context.close(promise: nil)
        }
    }

    // Completing a promise already completed is ignored: these only matter when nothing came.
    func channelInactive(context: ChannelHandlerContext) {
        answer.fail(GatewayExchange.Failure.unanswered("the connection closed before an answer"))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if error is HTTPParserError {
            answer.fail(GatewayExchange.Failure.unacceptable("the answer is not HTTP (\(error))"))
        } else {
            answer.fail(GatewayExchange.Failure.unanswered("\(error)"))
        }
        context.close(promise: nil)
    }
}

// MARK: - The gateway's JSON (proto3: int64 as strings, fields at their default value omitted)

/// An int64 as proto3 JSON writes it, a string ("42"); a plain number is accepted too.
struct ProtoInt64: Decodable {
    let value: Int64

    init(from decoder: Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let text = try? container.decode(String.self) {
            guard let value = Int64(text) else {
                throw DecodingError.dataCorruptedError(in: container, debugDescription: "'\(text)' is not an int64")
            }
            self.value = value
        } else {
            value = try container.decode(Int64.self)
        }
    }
}

struct GatewayKeyValue: Decodable {
    var key: String
    var value: String?
    var version: ProtoInt64?
    var mod_revision: ProtoInt64?
    var lease: ProtoInt64?

    func decoded() throws(EtcdError) -> EtcdKeyValue {
        guard let keyBytes = Data(base64Encoded: key), let keyText = String(data: keyBytes, encoding: .utf8) else {
            throw .badResponse("a key that is not base64 of UTF-8: '\(key.prefix(80))'")
        }
        guard let valueBytes = Data(base64Encoded: value ?? "") else {
            throw .badResponse("the value of '\(keyText)' is not base64")
        }
        return EtcdKeyValue(
            key: keyText, value: Array(valueBytes), version: version?.value ?? 0, modRevision: mod_revision?.value ?? 0,
            lease: lease?.value ?? 0)
    }
}

struct GatewayRange: Decodable {
    var kvs: [GatewayKeyValue]?

    func keyValues() throws(EtcdError) -> [EtcdKeyValue] {
        var decoded: [EtcdKeyValue] = []
        for keyValue in kvs ?? [] { decoded.append(try keyValue.decoded()) }
        return decoded
    }
}

struct GatewayTxn: Decodable {
    struct Response: Decodable {
        var response_put: GatewayHeaderOnly?
        var response_range: GatewayRange?
    }

    var succeeded: Bool?
    var responses: [Response]?
}

struct GatewayLeaseGrant: Decodable {
    var ID: ProtoInt64?
    var TTL: ProtoInt64?
    var error: String?
}

struct GatewayKeepAliveStream: Decodable {
    struct Result: Decodable {
        var ID: ProtoInt64?
        var TTL: ProtoInt64?
    }

    var result: Result?
    var error: GatewayStatus?
}

struct GatewayHeaderOnly: Decodable {}

/// The gateway's error body: `{"error": …, "message": …, "code": N}` (a gRPC status).
struct GatewayStatus: Decodable {
    var error: String?
    var message: String?
    var code: Int?

    var text: String { "\(message ?? error ?? "no message") (gRPC code \(code ?? 0))" }

    static let leaseNotFound = "requested lease not found"
}
