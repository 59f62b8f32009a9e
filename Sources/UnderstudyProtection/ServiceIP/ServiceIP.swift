import CUnderstudyHost
import Dispatch
import Foundation
import Logging
import UnderstudyCore

#if canImport(Glibc)
    import Glibc
#endif

/// The address clients use (`--service-ip IP/PREFIX --service-interface IF`): it moves with the
/// primary role. IPv4 only: it is announced with gratuitous ARP.
public struct ServiceIP: Sendable, Equatable, CustomStringConvertible {
    public let address: String
    public let prefixLength: Int
    public let interface: String

    public init(parsing text: String, interface: String) throws(ServiceIPError) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        var parsed = in_addr()
        guard parts.count == 2, inet_pton(AF_INET, String(parts[0]), &parsed) == 1, let prefix = Int(parts[1]), (1...32).contains(prefix) else {
            throw .malformed("'\(text)' is not IPv4/PREFIX (for example 10.77.0.100/24)")
        }
        guard !interface.isEmpty, interface.count < 16, interface.allSatisfy({ $0.isLetter || $0.isNumber || "._-@".contains($0) }) else {
            throw .malformed("'\(interface)' is not a network interface name")
        }
        address = String(parts[0])
        prefixLength = prefix
        self.interface = interface
    }

    public var description: String { "\(address)/\(prefixLength) on \(interface)" }
}

public enum ServiceIPError: Error, CustomStringConvertible, Equatable {
    case malformed(String)
    case failed(String)

    public var description: String {
        switch self {
        case .malformed(let reason): return reason
        case .failed(let reason): return reason
        }
    }
}

/// Puts the service IP on this host's interface and announces it, or takes it off. The kernel
/// holds the address; this only changes it, with `ip` (iproute2).
///
/// Taking it sends gratuitous ARP (a request and a reply, from a packet socket: `arping` waits a
/// second after sending) at once and twice more, a little over a second apart: a neighbour
/// ignores an update within its locktime (1 s by default) of the last, so one announcement can
/// be lost on a client that just resolved the old owner.
public final class ServiceIPHolder: Sendable {
    public let ip: ServiceIP
    private let logger: Logger
    /// Announcements after the first, spaced beyond the neighbours' locktime.
    static let announcements: [Duration] = [.zero, .milliseconds(1100), .milliseconds(2200)]

    public init(_ ip: ServiceIP, logger: Logger) {
        self.ip = ip
        self.logger = logger
    }

    /// Adds the address (a no-op if it is already there) and announces it; the later
    /// announcements go on in the background.
    public func take() throws(ServiceIPError) {
        try run("ip", ["addr", "replace", "\(ip.address)/\(ip.prefixLength)", "dev", ip.interface])
        announce()
        let queue = DispatchQueue(label: "understudy.service-ip")
        for delay in Self.announcements.dropFirst() {
            queue.asyncAfter(deadline: .now() + .nanoseconds(Int(delay.nanoseconds))) { [self] in announce() }
        }
        logger.notice("took the service IP", metadata: ["ip": "\(ip)"])
    }

    /// Removes the address if it is here. Never throws: a process giving up the role must go on
    /// giving it up; a failure is logged.
    public func giveUp() {
        guard isHere else { return }
        do {
            try run("ip", ["addr", "del", "\(ip.address)/\(ip.prefixLength)", "dev", ip.interface])
            logger.notice("gave up the service IP", metadata: ["ip": "\(ip)"])
        } catch {
            logger.error("cannot remove the service IP", metadata: ["ip": "\(ip)", "reason": "\(error)"])
        }
    }

    /// Whether the interface carries the address now.
    public var isHere: Bool {
        guard let listed = try? output("ip", ["-o", "-4", "addr", "show", "dev", ip.interface]) else { return false }
        return listed.split(whereSeparator: \.isWhitespace).contains { $0 == "\(ip.address)/\(ip.prefixLength)" }
    }

    private func announce() {
        var address = in_addr()
        _ = inet_pton(AF_INET, ip.address, &address)  // checked when parsed
        let result = understudy_gratuitous_arp(ip.interface, address.s_addr)
        if result != 0 {
            logger.warning("cannot announce the service IP", metadata: ["ip": "\(ip)", "reason": "\(String(cString: strerror(-result)))"])
        }
    }

    private func run(_ program: String, _ arguments: [String]) throws(ServiceIPError) {
        _ = try output(program, arguments)
    }

    /// Its stdout; a failure carries its first line of stderr.
    private func output(_ program: String, _ arguments: [String]) throws(ServiceIPError) -> String {
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("understudy-ip-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        let out = scratch.path + ".out"
        let err = scratch.path + ".err"
        defer {
            unlink(out)
            unlink(err)
        }
        let status: Int32
        do {
            status = try SpawnedProcess(program, arguments, stdout: .file(out), stderr: .file(err)).waitUntilExit()
        } catch {
            throw .failed("\(error) (the service IP needs iproute2)")
        }
        guard status == 0 else {
            let message = ((try? String(contentsOfFile: err, encoding: .utf8)) ?? "").split(separator: "\n").first.map(String.init)
            throw .failed("\(program) \(arguments.joined(separator: " ")): \(message ?? "exit status \(status)")")
        }
        return (try? String(contentsOfFile: out, encoding: .utf8)) ?? ""
    }
}
