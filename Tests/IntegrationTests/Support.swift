import Foundation
import Glibc
import XCTest

/// Starts and stops real `understudy` processes and runs real third-party clients against them.
enum Harness {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    static let binary: String =
        ProcessInfo.processInfo.environment["UNDERSTUDY_BIN"] ?? root.appendingPathComponent(".build/release/understudy").path

    static let guests: URL =
        ProcessInfo.processInfo.environment["UNDERSTUDY_GUESTS"].map { URL(fileURLWithPath: $0) }
        ?? root.appendingPathComponent("guests/build")

    /// Shared by every process a test run starts, so each guest is prepared (wasm-opt) once.
    static let cache = FileManager.default.temporaryDirectory.appendingPathComponent("understudy-integration-cache").path

    static func guest(_ name: String) throws -> String {
        let path = guests.appendingPathComponent("\(name).wasm").path
        guard FileManager.default.fileExists(atPath: path) else { throw XCTSkip("\(name).wasm not built: run make test") }
        guard FileManager.default.isExecutableFile(atPath: binary) else { throw XCTSkip("\(binary) not built: run make test") }
        return path
    }

    /// A port nobody listens on right now (bind to 0, read it back, release it).
    static func freePort() -> UInt16 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
                bind(fd, pointer, length)
                return getsockname(fd, pointer, &length)
            }
        }
        return UInt16(bigEndian: address.sin_port)
    }

    /// A TCP connection to 127.0.0.1:`port` whose reads time out after `timeoutSeconds`.
    static func connect(port: UInt16, timeoutSeconds: Int) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else {
            Glibc.close(fd)
            throw POSIXError(.ECONNREFUSED)
        }
        var timeout = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        return fd
    }

    struct Outcome {
        var status: Int32
        var stdout: String
        var stderr: String
    }

    /// Runs a program to completion (a client like redis-cli, or understudy expected to fail).
    @discardableResult
    static func run(_ program: String, _ arguments: [String], environment: [String: String] = [:]) throws -> Outcome {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: program.hasPrefix("/") ? program : "/usr/bin/env")
        process.arguments = program.hasPrefix("/") ? arguments : [program] + arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("out-\(UUID().uuidString)")
        let err = FileManager.default.temporaryDirectory.appendingPathComponent("err-\(UUID().uuidString)")
        _ = FileManager.default.createFile(atPath: out.path, contents: nil)
        _ = FileManager.default.createFile(atPath: err.path, contents: nil)
        defer {
            try? FileManager.default.removeItem(at: out)
            try? FileManager.default.removeItem(at: err)
        }
        process.standardOutput = try FileHandle(forWritingTo: out)
        process.standardError = try FileHandle(forWritingTo: err)
        process.standardInput = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        return Outcome(
            status: process.terminationStatus,
            stdout: (try? String(contentsOf: out, encoding: .utf8)) ?? "",
            stderr: (try? String(contentsOf: err, encoding: .utf8)) ?? "")
    }
}

/// `understudy run GUEST --listen 127.0.0.1:PORT`, started for real and stopped with SIGTERM.
final class ServedGuest {
    let process = Process()
    let port: UInt16
    private let log: URL

    /// `subcommand` is `run` or `restore`; guest arguments (after `--`) only exist for `run`.
    init(_ guest: String, options: [String] = [], subcommand: String = "run", guestArguments: [String]? = []) throws {
        let module = try Harness.guest(guest)
        port = Harness.freePort()
        log = FileManager.default.temporaryDirectory.appendingPathComponent("understudy-\(guest)-\(port).log")
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        process.executableURL = URL(fileURLWithPath: Harness.binary)
        process.arguments =
            [subcommand, module, "--listen", "127.0.0.1:\(port)"] + options + (guestArguments.map { ["--"] + $0 } ?? [])
        process.environment = ProcessInfo.processInfo.environment.merging(["UNDERSTUDY_CACHE": Harness.cache]) { $1 }
        process.standardOutput = try FileHandle(forWritingTo: log)
        process.standardError = process.standardOutput
        try process.run()
        try waitUntilServing()
    }

    deinit { stop() }

    func stop() {
        guard process.isRunning else { return }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    var output: String { (try? String(contentsOf: log, encoding: .utf8)) ?? "" }

    private func waitUntilServing() throws {
        let deadline = Date().addingTimeInterval(120)  // the first start of a guest runs wasm-opt
        while Date() < deadline {
            if !process.isRunning { throw ServedGuestError.exited(output) }
            if let client = try? LineClient(port: port) {
                client.close()
                return
            }
            usleep(50_000)
        }
        throw ServedGuestError.neverListened(output)
    }

    enum ServedGuestError: Error {
        case exited(String)
        case neverListened(String)
    }
}

/// A blocking line-protocol client over a real TCP socket (for the bank and echo guests).
final class LineClient {
    private let fd: Int32
    private var buffered: [UInt8] = []

    init(port: UInt16, timeoutSeconds: Int = 30) throws {
        fd = try Harness.connect(port: port, timeoutSeconds: timeoutSeconds)
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
