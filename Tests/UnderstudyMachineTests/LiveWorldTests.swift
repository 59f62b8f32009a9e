import Foundation
import Glibc
import UnderstudyCore
import XCTest

@testable import UnderstudyMachine

/// The real world's waits, over loopback TCP: readiness is what was asked for, and a descriptor
/// number the kernel gives again to a new client is watched as the new client.
final class LiveWorldTests: XCTestCase {
    private func freePort() throws -> UInt16 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { Glibc.close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
                bind(fd, pointer, length) == 0 && getsockname(fd, pointer, &length) == 0
            }
        }
        XCTAssertTrue(bound)
        return UInt16(bigEndian: address.sin_port)
    }

    private func connect(to port: UInt16) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        XCTAssertEqual(connected, 0, "connect: \(hostErrorText())")
        return fd
    }

    private func accept(_ world: LiveWorld) throws -> ConnectionID {
        let listening = PollInterest(target: .listener(ListenerID(0)), readable: true, writable: false)
        XCTAssertEqual(world.poll([listening], timeoutNanos: 5_000_000_000), .ready([PollReadiness(interest: 0, readable: true, writable: false, hangup: false)]))
        struct NotAccepted: Error {}
        guard case .done(let id) = world.accept(listener: ListenerID(0)) else { throw NotAccepted() }
        return id
    }

    func testAWaitReportsWhatWasAskedAndWatchesAReusedDescriptorAsItsNewClient() throws {
        let port = try freePort()
        let world = try LiveWorld(listening: [ServiceAddress(host: "127.0.0.1", port: port)], suspension: SuspensionRequest())
        let first = try connect(to: port)
        defer { Glibc.close(first) }
        let a = try accept(world)
        XCTAssertEqual(Glibc.send(first, "x", 1, 0), 1)
        usleep(20_000)

        // Data waits, but only writability was asked for: that is all a wait reports.
        let writable = PollInterest(target: .connection(a), readable: false, writable: true)
        let readable = PollInterest(target: .connection(a), readable: true, writable: false)
        XCTAssertEqual(world.poll([writable], timeoutNanos: 0), .ready([PollReadiness(interest: 0, readable: false, writable: true, hangup: false)]))
        XCTAssertEqual(
            world.poll([readable, writable], timeoutNanos: 0),
            .ready([
                PollReadiness(interest: 0, readable: true, writable: false, hangup: false),
                PollReadiness(interest: 1, readable: false, writable: true, hangup: false),
            ]))
        var byte: UInt8 = 0
        XCTAssertEqual(withUnsafeMutableBytes(of: &byte) { world.receive(connection: a, into: $0) }, .done(1))
        XCTAssertEqual(world.poll([readable], timeoutNanos: 10_000_000), .timedOut)

        // The guest closes it and accepts the next client, already waiting, without a wait in
        // between: the kernel gives the new socket the same descriptor number, and the wait
        // that follows names the same descriptor as the last one did.
        let second = try connect(to: port)
        XCTAssertEqual(Glibc.send(second, "y", 1, 0), 1)
        usleep(20_000)
        world.close(connection: a)
        guard case .done(let b) = world.accept(listener: ListenerID(0)) else { return XCTFail("the second client was not accepted") }
        XCTAssertEqual(
            world.poll([PollInterest(target: .connection(b), readable: true, writable: false)], timeoutNanos: 2_000_000_000),
            .ready([PollReadiness(interest: 0, readable: true, writable: false, hangup: false)]))

        // The client goes: readable (end of file), as poll(2) says it.
        Glibc.close(second)
        usleep(20_000)
        XCTAssertEqual(withUnsafeMutableBytes(of: &byte) { world.receive(connection: b, into: $0) }, .done(1))
        guard case .ready(let ready) = world.poll([PollInterest(target: .connection(b), readable: true, writable: false)], timeoutNanos: 2_000_000_000)
        else { return XCTFail("the closed client's connection never became readable") }
        XCTAssertEqual(ready.map(\.readable), [true])
    }
}
