import Foundation
import Glibc
import XCTest

/// Hosts as network namespaces (`scripts/hosts.sh`): `a`, `b`, `c`, `clients` and `etcd` on one
/// bridge, which this process reaches too (10.77.0.1). Made once per run, removed when the run
/// ends; a cut made by a test is healed when that test ends.
enum Hosts {
    static let addresses = ["a": "10.77.0.11", "b": "10.77.0.12", "c": "10.77.0.13", "clients": "10.77.0.20", "etcd": "10.77.0.30"]
    static let script = Harness.root.appendingPathComponent("scripts/hosts.sh").path

    static func namespace(_ host: String) throws -> String {
        guard addresses[host] != nil else { throw HarnessError.missingPrerequisite("no host '\(host)' in scripts/hosts.sh") }
        return "us-\(host)"
    }

    static func address(_ host: String) throws -> String {
        guard let address = addresses[host] else { throw HarnessError.missingPrerequisite("no host '\(host)' in scripts/hosts.sh") }
        return address
    }

    private static let made: Result<Void, Error> = Result {
        try hostsScript(["up"])
        TestScope.current.atRunEnd { _ = try? hostsScript(["down"]) }
    }

    /// The namespaces, made if this run has not yet.
    static func up() throws { try made.get() }

    /// Drops all of `host`'s traffic until the test ends (or `heal`).
    static func cut(_ host: String) throws {
        try hostsScript(["cut", host])
        TestScope.current.atEnd { _ = try? hostsScript(["heal", host]) }
    }

    static func heal(_ host: String) throws { try hostsScript(["heal", host]) }

    /// Drops only what `a` and `b` send each other, until the test ends (or `healLink`).
    static func cutLink(_ a: String, _ b: String) throws {
        try hostsScript(["cut-link", a, b])
        TestScope.current.atEnd { _ = try? hostsScript(["heal-link", a, b]) }
    }

    static func healLink(_ a: String, _ b: String) throws { try hostsScript(["heal-link", a, b]) }

    /// Host death: cut, then SIGKILL everything in it; the host is healed (empty) when the test ends.
    static func kill(_ host: String) throws {
        try hostsScript(["kill", host])
        TestScope.current.atEnd { _ = try? hostsScript(["heal", host]) }
    }

    /// Moves the calling thread into `host`'s network namespace: sockets it opens from then on
    /// are that host's. Only for a thread of its own (the runner's others stay where they are).
    static func enter(_ host: String) throws {
        typealias SetNamespace = @convention(c) (Int32, Int32) -> Int32
        guard let symbol = dlsym(nil, "setns") else {  // RTLD_DEFAULT
            throw HarnessError.missingPrerequisite("setns is not in this libc")
        }
        let fd = open("/var/run/netns/\(try namespace(host))", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw HarnessError.missingPrerequisite("no namespace for host \(host): errno \(errno)") }
        defer { close(fd) }
        guard unsafeBitCast(symbol, to: SetNamespace.self)(fd, 0x4000_0000) == 0 else {  // CLONE_NEWNET
            throw HarnessError.missingPrerequisite("cannot enter host \(host)'s namespace: errno \(errno)")
        }
    }

    /// The address that moves with the primary role (`--service-ip`), on every host's eth0.
    static let serviceIP = "10.77.0.100"
    static var serviceIPFlags: [String] { ["--service-ip", "\(serviceIP)/24", "--service-interface", "eth0"] }

    /// A real client in the `clients` namespace, through the service IP: redis-cli's answer.
    static func redisCLI(port: UInt16, _ arguments: [String]) throws -> String {
        let outcome = try Harness.run(
            "ip", ["netns", "exec", try namespace("clients"), "redis-cli", "-h", serviceIP, "-p", "\(port)"] + arguments, timeoutSeconds: 30)
        guard outcome.status == 0 else { throw HarnessError.timedOut("redis-cli \(arguments.joined(separator: " ")) failed: \(outcome.stderr)") }
        return outcome.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Whether `host`'s interface carries the service IP now.
    static func holdsServiceIP(_ host: String) throws -> Bool {
        try hostsScript(["exec", host, "ip", "-o", "-4", "addr", "show", "dev", "eth0"]).contains(" \(serviceIP)/24 ")
    }

    @discardableResult
    private static func hostsScript(_ arguments: [String]) throws -> String {
        let outcome = try Harness.run("bash", [script] + arguments, timeoutSeconds: 30)
        guard outcome.status == 0 else {
            throw HarnessError.missingPrerequisite("scripts/hosts.sh \(arguments.joined(separator: " ")) failed (it needs root, iproute2 and tc): \(outcome.stderr)")
        }
        return outcome.stdout
    }
}
