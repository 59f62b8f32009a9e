import Glibc
import Logging
import NIOCore
import NIOPosix
import UnderstudyCore
import XCTest

@testable import UnderstudyReplication

/// The handshake over real TCP on loopback: a backup listener and a primary connector in this
/// process, plus a raw socket for a peer that sends garbage.
final class HandshakeTests: XCTestCase {
    private let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    private let logger = Logger(label: "test")
    private let hash = String(repeating: "ab", count: 32)

    override func tearDown() async throws {
        try await group.shutdownGracefully()
    }

    /// A stream finished by a watchdog after `seconds`: awaiting what never arrives fails the
    /// test (nil) instead of hanging it.
    private func boundedStream<Element: Sendable>(of: Element.Type, seconds: Int = 10) -> (
        stream: AsyncStream<Element>, continuation: AsyncStream<Element>.Continuation
    ) {
        let made = AsyncStream<Element>.makeStream()
        Task { [continuation = made.continuation] in
            try? await Task.sleep(for: .seconds(seconds))
            continuation.finish()
        }
        return made
    }

    private func connectRaw(port: Int) -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var socketAddress = sockaddr_in()
        socketAddress.sin_family = sa_family_t(AF_INET)
        socketAddress.sin_port = UInt16(port).bigEndian
        socketAddress.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &socketAddress) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        XCTAssertEqual(connected, 0)
        // Every read below is bounded: a backup that never answers fails the test.
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        return fd
    }

    private func listener(onMessage: @escaping @Sendable (WireMessage, Channel) -> Void = { _, _ in }) async throws
        -> (ReplicationListener, ServiceAddress)
    {
        let listener = try await ReplicationListener.bind(
            try ServiceAddress(parsing: "127.0.0.1:0"), security: .insecure, group: group, logger: logger, onMessage: onMessage)
        return (listener, try ServiceAddress(parsing: "127.0.0.1:\(listener.localAddress.port!)"))
    }

    func testAPrimaryIsWelcomedAndItsMessagesArrive() async throws {
        let arrived = boundedStream(of: WireMessage.self)
        let (listener, address) = try await listener { message, _ in arrived.continuation.yield(message) }
        let channel = try await ReplicationConnector.connect(
            to: address, hello: .init(mode: .llm, moduleHash: hash, moduleBytes: 1024, memoryLimitBytes: 1 << 24), security: .insecure, group: group, logger: logger)
        try await channel.writeAndFlush(WireMessage.logRecords(first: 0, bytes: [1, 2, 3]))
        try await channel.writeAndFlush(WireMessage.heartbeat)
        try await channel.writeAndFlush(WireMessage.checkpointApplied(epoch: 1))
        var iterator = arrived.stream.makeAsyncIterator()
        let first = await iterator.next()
        let second = await iterator.next()
        XCTAssertEqual(first, .logRecords(first: 0, bytes: [1, 2, 3]))
        XCTAssertEqual(second, .checkpointApplied(epoch: 1), "heartbeats are consumed by the connection, not handed on")
        try await channel.close()
        try await listener.close()
    }

    func testAWrongVersionModeOrHashIsRefusedWithItsReason() async throws {
        let (listener, address) = try await listener()
        let cases: [(WireMessage.Hello, String)] = [
            (.init(protocolVersion: 9, mode: .remus, moduleHash: hash, moduleBytes: 1024, memoryLimitBytes: 1 << 24), "protocol version 9 is not supported (this backup speaks \(WireCodec.protocolVersion))"),
            (.init(mode: .none, moduleHash: hash, moduleBytes: 1024, memoryLimitBytes: 1 << 24), "mode none needs no backup"),
            (.init(mode: .remus, moduleHash: "xyz", moduleBytes: 1024, memoryLimitBytes: 1 << 24), "the module hash is not a SHA-256 in hex"),
            (
                .init(mode: .remus, moduleHash: hash, moduleBytes: 1 << 30, memoryLimitBytes: 1 << 24),
                "a module of 1073741824 bytes is not one this backup takes (at most 268435456)"
            ),
            (
                .init(mode: .llm, moduleHash: hash, moduleBytes: 1024, memoryLimitBytes: 1 << 33),
                "a memory limit of 8589934592 bytes is past what wasm32 addresses"
            ),
        ]
        for (hello, reason) in cases {
            do {
                _ = try await ReplicationConnector.connect(to: address, hello: hello, security: .insecure, group: group, logger: logger)
                XCTFail("\(hello) was welcomed")
            } catch let error as ReplicationConnectError {
                XCTAssertEqual(error, .refused(reason))
            }
        }
        try await listener.close()
    }

    /// Heartbeats keep a connection alive, but not one that never says hello: it is refused with
    /// its reason once the handshake's patience is spent, freeing its place in the listener.
    func testAPeerThatBeatsButNeverSaysHelloIsRefused() async throws {
        let listener = try await ReplicationListener.bind(
            try ServiceAddress(parsing: "127.0.0.1:0"), security: .insecure, group: group, logger: logger,
            heartbeat: HeartbeatTiming(interval: .milliseconds(5), timeout: .milliseconds(100)), handshakePatience: .milliseconds(300))
        let fd = connectRaw(port: listener.localAddress.port!)
        defer { close(fd) }
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let beating = Task.detached {
            var sequence: UInt64 = 0
            while !Task.isCancelled {
                let beat = WireCodec.encode(.heartbeat, sequence: sequence)
                sequence += 1
                guard beat.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == beat.count else { return }
                try? await Task.sleep(for: .milliseconds(10))
            }
        }
        defer { beating.cancel() }
        var decoder = WireDecoder()
        var chunk = [UInt8](repeating: 0, count: 4096)
        var messages: [WireMessage] = []
        while true {
            let got = recv(fd, &chunk, chunk.count, 0)
            XCTAssertGreaterThanOrEqual(got, 0, "the beating stranger was never closed (errno \(errno))")
            if got <= 0 { break }
            decoder.append(chunk[..<got])
            while let message = try decoder.next() { messages.append(message) }
        }
        XCTAssertTrue(messages.contains(.refusal("no hello within 300 ms")), "\(messages.filter { $0 != .heartbeat })")
        try await listener.close()
    }

    /// A welcomed peer that falls silent is given up after the heartbeat timeout, and the layer
    /// above hears of it (the backup promotes on this); the listener's own beats keep arriving
    /// meanwhile.
    func testASilentPeerIsClosedAfterTheHeartbeatTimeout() async throws {
        let closed = boundedStream(of: Void.self)
        // Before the connection exists: the silence the listener measures starts after this.
        let started = ContinuousClock.now
        let listener = try await ReplicationListener.bind(
            try ServiceAddress(parsing: "127.0.0.1:0"), security: .insecure, group: group, logger: logger,
            heartbeat: HeartbeatTiming(interval: .milliseconds(5), timeout: .milliseconds(40)),
            onClose: { _ in closed.continuation.yield() })
        let fd = connectRaw(port: listener.localAddress.port!)
        defer { close(fd) }
        let hello = WireCodec.encode(.hello(.init(mode: .llm, moduleHash: hash, moduleBytes: 1024, memoryLimitBytes: 1 << 24)), sequence: 0)
        XCTAssertEqual(hello.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }, hello.count)
        var iterator = closed.stream.makeAsyncIterator()
        let closedInTime = await iterator.next()
        XCTAssertNotNil(closedInTime, "the silent peer was never closed")
        // A lower bound only: the peer's last byte came after `started`, so an early close is a
        // bug however loaded the machine is; how late it comes is not asserted.
        XCTAssertGreaterThanOrEqual(ContinuousClock.now - started, .milliseconds(40), "closed before the timeout")
        var decoder = WireDecoder()
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let got = recv(fd, &chunk, chunk.count, 0)
            XCTAssertGreaterThanOrEqual(got, 0, "the closed connection never read end-of-file (errno \(errno))")
            if got <= 0 { break }
            decoder.append(chunk[..<got])
        }
        var messages: [WireMessage] = []
        while let message = try decoder.next() { messages.append(message) }
        XCTAssertEqual(messages.first, .welcome)
        XCTAssertTrue(messages.dropFirst().contains(.heartbeat), "the backup beat while it waited: \(messages)")
        try await listener.close()
    }

    /// A peer that sends garbage is disconnected: the raw socket reads end-of-file, and the
    /// listener keeps welcoming well-behaved primaries afterwards.
    func testGarbageClosesTheConnectionAndTheListenerCarriesOn() async throws {
        let received = boundedStream(of: WireMessage.self)
        let (listener, address) = try await listener { message, _ in received.continuation.yield(message) }
        let fd = connectRaw(port: Int(address.port))
        defer { close(fd) }
        let garbage = Array("GET / HTTP/1.1\r\nHost: backup\r\n\r\n".utf8)
        XCTAssertEqual(garbage.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }, garbage.count)
        var byte: UInt8 = 0
        XCTAssertEqual(recv(fd, &byte, 1, 0), 0, "the backup must close a connection that sent garbage")

        let channel = try await ReplicationConnector.connect(
            to: address, hello: .init(mode: .remus, moduleHash: hash, moduleBytes: 1024, memoryLimitBytes: 1 << 24), security: .insecure, group: group, logger: logger)
        try await channel.writeAndFlush(WireMessage.checkpointApplied(epoch: 3))
        var iterator = received.stream.makeAsyncIterator()
        let message = await iterator.next()
        XCTAssertEqual(message, .checkpointApplied(epoch: 3), "nothing from the garbage peer was handed on")
        try await channel.close()
        try await listener.close()
    }
}
