import Foundation
import Glibc
import XCTest

/// `understudy run GUEST --listen 127.0.0.1:PORT`, started for real, stopped with SIGKILL.
final class ServedGuest {
    let child: ChildProcess
    let port: UInt16

    /// `subcommand` is `run` or `restore`; guest arguments (after `--`) only exist for `run`.
    init(_ guest: String, options: [String] = [], subcommand: String = "run", guestArguments: [String]? = []) throws {
        let module = try Harness.guest(guest)
        port = Harness.freePort()
        child = try UnderstudyProcess(
            guest, [subcommand, module, "--listen", "127.0.0.1:\(port)"] + options + (guestArguments.map { ["--"] + $0 } ?? [])
        ).child
        // The first start of a guest runs wasm-opt.
        try Harness.waitUntil("\(guest) listening on \(port):\n\(child.output)", seconds: 120) {
            guard child.isRunning else { throw HarnessError.timedOut("\(guest) exited before it listened:\n\(child.output)") }
            guard let client = try? LineClient(port: port) else { return false }
            client.close()
            return true
        }
    }

    var pid: Int32 { child.pid }
    var output: String { child.output }
    func stop() { child.kill() }
}

/// A client program left running (redis-cli, redis-benchmark), its stdout and stderr kept in one
/// file in the order written (redis-cli flushes each reply), so an error line marks where the
/// acknowledged prefix ends.
final class ClientProcess {
    private let child: ChildProcess

    init(_ program: String, _ arguments: [String], stdin: URL? = nil) throws {
        child = try ChildProcess(program, arguments, stdin: stdin)
    }

    var output: String { child.output }
    func stop() { child.kill() }
}

/// A blocking line-protocol client over a real TCP socket (for the bank and echo guests).
final class LineClient {
    private let fd: Int32
    private var buffered: [UInt8] = []

    init(port: UInt16, timeoutSeconds: Int = 30, host: String = "127.0.0.1") throws {
        fd = try Harness.connect(port: port, timeoutSeconds: timeoutSeconds, host: host)
    }

    deinit { close() }

    private var closed = false
    func close() {
        if !closed { Glibc.close(fd) }
        closed = true
    }

    func send(_ text: String) throws {
        let bytes = Array(text.utf8)
        var sent = 0
        while sent < bytes.count {
            let result = bytes[sent...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard result > 0 else { throw POSIXError(.EPIPE) }
            sent += result
        }
    }

    func readLine() throws -> String {
        while true {
            if let newline = buffered.firstIndex(of: UInt8(ascii: "\n")) {
                let line = String(decoding: buffered[..<newline], as: UTF8.self)
                buffered.removeSubrange(...newline)
                return line.hasSuffix("\r") ? String(line.dropLast()) : line
            }
            var chunk = [UInt8](repeating: 0, count: 4096)
            let got = recv(fd, &chunk, chunk.count, 0)
            guard got > 0 else { throw POSIXError(got == 0 ? .ECONNRESET : .ETIMEDOUT) }
            buffered.append(contentsOf: chunk[..<got])
        }
    }

    func request(_ line: String) throws -> String {
        try send(line + "\n")
        return try readLine()
    }
}

/// One scrape of `--metrics HOST:PORT`. Reading a metric that is not there is an error that
/// names it, never a default that a renamed metric would silently become.
struct MetricsScrape {
    let text: String

    init(port: UInt16) throws {
        let scrape = try Harness.run("curl", ["-sf", "--max-time", "10", "http://127.0.0.1:\(port)/metrics"], timeoutSeconds: 20)
        guard scrape.status == 0 else { throw HarnessError.missingMetric("no metrics at 127.0.0.1:\(port): \(scrape.stderr)") }
        text = scrape.stdout
    }

    /// The value of the first series named `name` (any labels).
    /// The first series of `name`, or the first with `label` (like `role="backup"`: a promoted
    /// backup serves its primary's series beside its own).
    func value(_ name: String, with label: String? = nil) throws -> Double {
        let line = text.split(separator: "\n").first {
            ($0.hasPrefix(name + "{") || $0.hasPrefix(name + " ")) && (label.map($0.contains) ?? true)
        }
        guard let line, let value = line.split(separator: " ").last.flatMap({ Double($0) }) else {
            throw HarnessError.missingMetric("metric \(name) is not served:\n\(text)")
        }
        return value
    }
}

final class LockedCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var count = 0
    func add() { lock.withLock { count += 1 } }
    var value: Int { lock.withLock { count } }
}
