import Logging
import NIOCore
import NIOConcurrencyHelpers
import NIOPosix
import UnderstudyCore
import XCTest

@testable import UnderstudyReplication

/// How one side ends a replication connection, over real TCP on loopback.
final class ClosingTests: XCTestCase {
    private let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
    private let logger = Logger(label: "test")

    override func tearDown() async throws {
        try await group.shutdownGracefully()
    }

    /// The primary refuses a backup that is busy (it reads nothing for 300 ms, while it goes on
    /// heartbeating) behind a megabyte of log: the backup still reads every byte and the reason
    /// after them. Closing the socket right after the refusal was written got it reset by the
    /// backup's next heartbeat, and the reset threw away what the backup had not read, the reason
    /// with it: it took the close for the primary's death, and claimed its machine.
    func testARefusalReachesAPeerThatIsBusyWhenItIsSent() async throws {
        let arrived = NIOLockedValueBox<[String]>([])
        let closed = group.next().makePromise(of: Void.self)
        let listener = try await ReplicationListener.bind(
            try ServiceAddress(parsing: "127.0.0.1:0"), security: .insecure, group: group, logger: logger,
            heartbeat: HeartbeatTiming(interval: .milliseconds(10), timeout: .seconds(10)),
            onMessage: { message, channel in
                switch message {
                case .logRecords(let first, let bytes):
                    arrived.withLockedValue { $0.append("log \(first) \(bytes.count)") }
                    guard first == 0 else { return }
                    // Busy: the kernel takes what follows, the backup does not read it yet.
                    channel.setOption(ChannelOptions.autoRead, value: false).whenSuccess {
                        channel.eventLoop.scheduleTask(in: .milliseconds(300)) {
                            channel.setOption(ChannelOptions.autoRead, value: true).whenSuccess { channel.read() }
                        }
                    }
                case .refusal(let reason): arrived.withLockedValue { $0.append("refusal \(reason)") }
                default: break
                }
            },
            onClose: { _ in closed.succeed() })
        let channel = try await ReplicationConnector.connect(
            to: try ServiceAddress(parsing: "127.0.0.1:\(listener.localAddress.port!)"),
            hello: .init(mode: .llm, moduleHash: String(repeating: "ab", count: 32), moduleBytes: 1024, memoryLimitBytes: 1 << 26),
            security: .insecure, group: group, logger: logger,
            heartbeat: HeartbeatTiming(interval: .milliseconds(10), timeout: .seconds(10)))
        try await channel.writeAndFlush(WireMessage.logRecords(first: 0, bytes: [1]))
        try await Task.sleep(for: .milliseconds(50))
        channel.writeAndFlush(WireMessage.logRecords(first: 1, bytes: [UInt8](repeating: 7, count: 1 << 20)), promise: nil)
        try await channel.close(after: .refusal("the backup acknowledged nothing")).get()
        try await closed.futureResult.get()
        XCTAssertEqual(arrived.withLockedValue { $0 }, ["log 0 1", "log 1 1048576", "refusal the backup acknowledged nothing"])
        try await listener.close()
    }
}
