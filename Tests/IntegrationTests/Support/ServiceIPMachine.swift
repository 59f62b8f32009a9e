import Foundation
import XCTest

/// One protected machine across hosts, every process on the service IP (`Hosts.serviceIP`):
/// an etcd of its own on the `etcd` host, mutual TLS, and standbys and primaries started on the
/// hosts a test names. Standbys register in etcd; primaries find them there (no `--backup`).
final class ServiceIPMachine {
    let etcd: EtcdServer
    let servicePort = Harness.freePort()
    let replicationPort = Harness.freePort()
    let name: String
    private var processes: [UnderstudyProcess] = []

    init(_ label: String) throws {
        try Hosts.up()
        etcd = try EtcdServer(host: "etcd")
        name = "\(label)-\(servicePort)"
    }

    private var common: [String] {
        get throws {
            try Harness.certificates().flags + ["--etcd", etcd.endpoint, "--name", name, "--listen", "\(Hosts.serviceIP):\(servicePort)"]
                + Hosts.serviceIPFlags
        }
    }

    /// `understudy backup` on `host`, once it has registered as a standby.
    func standby(on host: String, options: [String] = []) throws -> UnderstudyProcess {
        let process = try UnderstudyProcess(
            "backup on \(host)", ["backup", "--replication", "\(try Hosts.address(host)):\(replicationPort)"] + (try common) + options,
            environment: ["UNDERSTUDY_WASM_OPT": "/nonexistent/wasm-opt"], host: host)
        processes.append(process)
        try process.waitFor("registered as a standby")
        return process
    }

    /// `understudy primary` of kv on `host` (a standby afterwards, on a planned migration), once protected.
    func primary(on host: String, mode: String) throws -> UnderstudyProcess {
        let process = try UnderstudyProcess(
            "primary on \(host)",
            ["primary", try Harness.guest("kv"), "--mode", mode, "--replication", "\(try Hosts.address(host)):\(replicationPort)"]
                + (try common), host: host)
        processes.append(process)
        try process.waitFor("the machine is protected")
        return process
    }

    /// INCRs from the `clients` host through the service IP, already acknowledged 20 times.
    func load() throws -> IncrementLoad {
        let load = IncrementLoad(port: servicePort, key: "counter", hosts: [Hosts.serviceIP], from: "clients")
        try Harness.waitUntil("INCRs acknowledged through the service IP") { load.highest >= 20 }
        return load
    }

    func stop() {
        processes.forEach { $0.kill() }
        etcd.stop()
    }
}

extension IncrementLoad {
    /// Stops, then: no reply was an error, no value went backwards or came twice (two processes
    /// never both acknowledged), and the counter served through the service IP is at least every
    /// value a client saw.
    func checkThroughServiceIP(_ label: String) throws {
        stop()
        XCTAssertEqual(errors, [], label)
        let values = acknowledgements.map(\.value)
        XCTAssertEqual(values, values.sorted(), "\(label): the counter went backwards: two processes acknowledged")
        XCTAssertEqual(Set(values).count, values.count, "\(label): one value acknowledged twice")
        let served = try XCTUnwrap(Int(try Hosts.redisCLI(port: port, ["GET", key])), label)
        XCTAssertGreaterThanOrEqual(served, highest, "\(label): an acknowledged INCR is lost")
    }
}
