import Foundation
import Glibc

/// A real single-member etcd on two free loopback ports (client, peer) with a data directory of
/// its own, owned by the current test: killed, and its files removed, when the test ends.
/// Tests make it unreachable by pausing (SIGSTOP: connections are accepted, nothing answers)
/// or stopping it (SIGKILL: connections are refused).
final class EtcdServer {
    static let program = "/usr/bin/etcd"

    let clientPort: UInt16
    let peerPort: UInt16
    /// etcd's own log (errors only); named when it does not start.
    let logFile: URL
    private let process: ChildProcess

    /// Where it listens: loopback, or its host's address (`Hosts`).
    let address: String
    var endpoint: String { "http://\(address):\(clientPort)" }
    var pid: Int32 { process.pid }

    /// Starts etcd and returns once it answers /health; fails naming its log after `startupSeconds`.
    /// `host`: one of `Hosts`' namespaces to run in, listening on its address (nil: loopback here).
    init(startupSeconds: Double = 30, host: String? = nil) throws {
        guard FileManager.default.isExecutableFile(atPath: Self.program) else {
            throw HarnessError.missingPrerequisite("etcd is not installed: run `make test` (scripts/setup.sh installs etcd-server)")
        }
        let directory = Harness.scratch("etcd")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        clientPort = Harness.freePort()
        peerPort = Harness.freePort()
        logFile = directory.appendingPathComponent("etcd.log")
        address = try host.map(Hosts.address) ?? "127.0.0.1"
        let client = "http://\(address):\(clientPort)"
        let peer = "http://\(address):\(peerPort)"
        let inNamespace = try host.map { ["netns", "exec", try Hosts.namespace($0), Self.program] }
        process = try ChildProcess(
            inNamespace == nil ? Self.program : "/usr/bin/ip",
            (inNamespace ?? []) + [
                "--name", "default", "--data-dir", directory.appendingPathComponent("data").path,
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", "default=\(peer)",
                "--logger", "zap", "--log-level", "error", "--log-outputs", logFile.path,
            ])
        try Harness.waitUntil("etcd on \(client) answering /health (its log: \(logFile.path))", seconds: startupSeconds) {
            guard process.isRunning else {
                let log = (try? String(contentsOf: logFile, encoding: .utf8)) ?? ""
                let status = process.terminationStatus.map(String.init) ?? "unknown"
                throw HarnessError.timedOut(
                    "etcd on \(client) exited with status \(status) before answering:\n\(process.output.suffix(2000))\(log.suffix(2000))")
            }
            return isHealthy()
        }
    }

    func pause() { kill(pid, SIGSTOP) }
    func resume() { kill(pid, SIGCONT) }
    func stop() { process.kill() }

    /// GET /health answered `"health":"true"` (a member with a leader, ready for requests).
    private func isHealthy() -> Bool {
        guard let fd = try? Harness.connect(port: clientPort, timeoutSeconds: 1, host: address) else { return false }
        defer { close(fd) }
        let request = Array("GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".utf8)
        guard write(fd, request, request.count) == request.count else { return false }
        // HTTP/1.0: the answer ends when etcd closes; a health answer is far below the bound.
        var answer: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1024)
        while answer.count < 16 * 1024 {
            let count = read(fd, &chunk, chunk.count)
            guard count > 0 else { break }
            answer += chunk[..<count]
        }
        return String(decoding: answer, as: UTF8.self).contains(#""health":"true""#)
    }
}
