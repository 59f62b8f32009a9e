import ArgumentParser
import Foundation
import Glibc
import UnderstudyCore

struct StatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Print what a running understudy process reports on its --metrics endpoint, for a person.",
        discussion: "Reads http://HOST:PORT/metrics (Prometheus text) from `run`, `primary` or `backup` started with --metrics HOST:PORT."
    )

    @Option(name: .long, help: "HOST:PORT the process serves its metrics on (its --metrics).")
    var metrics: String

    func validate() throws {
        do { _ = try ServiceAddress(parsing: metrics) } catch { throw ValidationError("--metrics \(error)") }
    }

    func run() throws {
        let address = try ServiceAddress(parsing: metrics)
        let text: String
        do {
            text = try Self.fetch(address)
        } catch {
            FileHandle.standardError.write(Data("understudy: cannot read metrics from \(address): \(error)\n".utf8))
            throw ExitCode(1)
        }
        print(Self.describe(MetricsText(text), at: address))
    }

    static func describe(_ metrics: MetricsText, at address: ServiceAddress) -> String {
        var lines = ["understudy at \(address)"]
        if let protected = metrics.series("understudy_protected").first {
            let role = protected.labels["role"] ?? "?"
            let mode = protected.labels["mode"].map { " (\($0))" } ?? ""
            lines.append("  role: \(role)\(mode), \(protected.value == 1 ? "protected" : "not protected")")
        } else {
            lines.append("  role: unprotected machine (run)")
        }
        func line(_ label: String, _ value: String?) { if let value { lines.append("  \(label): \(value)") } }
        func count(_ name: String) -> String? {
            // Both roles register every replication metric; a count still at zero is the other role's.
            guard let total = metrics.total(name), total > 0 else { return nil }
            return String(format: "%.0f", total)
        }
        func mean(_ name: String) -> String? {
            guard let count = metrics.total(name + "_count"), count > 0, let sum = metrics.total(name + "_sum") else { return nil }
            return String(format: "mean %.3f ms over %.0f", sum / count * 1000, count)
        }
        line("checkpoints sent", count("understudy_checkpoints_sent"))
        line("checkpoints applied", count("understudy_checkpoints_applied"))
        line("bytes replicated", metrics.total("understudy_replicated_bytes").flatMap { $0 > 0 ? String(format: "%.1f MB", $0 / 1e6) : nil })
        line("suspension pause", mean("understudy_suspension_pause"))
        line("checkpoint capture", mean("understudy_checkpoint_capture"))
        line("output hold (oldest of each release)", mean("understudy_output_hold"))
        line("log entries not yet acknowledged", count("understudy_log_unacknowledged_entries"))
        line("log entries held", count("understudy_log_held_entries"))
        line("failovers", count("understudy_failovers"))
        return lines.joined(separator: "\n")
    }

    /// One GET over a plain socket: the endpoint is ours and speaks HTTP/1.1 with a length.
    static func fetch(_ address: ServiceAddress) throws -> String {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var found: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(address.host, "\(address.port)", &hints, &found) == 0, let info = found else {
            throw CommandError("cannot resolve \(address.host)")
        }
        defer { freeaddrinfo(found) }
        let fd = socket(info.pointee.ai_family, info.pointee.ai_socktype, 0)
        guard fd >= 0 else { throw CommandError(String(cString: strerror(errno))) }
        defer { close(fd) }
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        guard connect(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0 else { throw CommandError(String(cString: strerror(errno))) }
        let request = Array("GET /metrics HTTP/1.1\r\nHost: \(address.host)\r\nConnection: close\r\n\r\n".utf8)
        guard request.withUnsafeBytes({ FileDescriptorWriting.writeAll(fd, $0) }) == nil else { throw CommandError("the request failed") }
        var response = [UInt8]()
        var chunk = [UInt8](repeating: 0, count: 65_536)
        while true {
            let got = recv(fd, &chunk, chunk.count, 0)
            if got <= 0 { break }
            response += chunk[..<got]
        }
        let text = String(decoding: response, as: UTF8.self)
        guard text.hasPrefix("HTTP/1.1 200"), let body = text.range(of: "\r\n\r\n") else {
            throw CommandError("unexpected answer: \(text.prefix(60))")
        }
        return String(text[body.upperBound...])
    }
}

/// Prometheus text exposition, as far as `status` reads it: `name{labels} value` lines.
struct MetricsText {
    struct Series {
        var name: String
        var labels: [String: String]
        var value: Double
    }

    let all: [Series]

    init(_ text: String) {
        all = text.split(separator: "\n").compactMap { line -> Series? in
            guard !line.hasPrefix("#"), let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...])
            else { return nil }
            let key = line[..<space]
            guard let brace = key.firstIndex(of: "{") else { return Series(name: String(key), labels: [:], value: value) }
            var labels: [String: String] = [:]
            for pair in key[key.index(after: brace)...].dropLast().split(separator: ",") {
                let parts = pair.split(separator: "=", maxSplits: 1)
                if parts.count == 2 { labels[String(parts[0])] = String(parts[1].trimmingCharacters(in: CharacterSet(charactersIn: "\""))) }
            }
            return Series(name: String(key[..<brace]), labels: labels, value: value)
        }
    }

    func series(_ name: String) -> [Series] { all.filter { $0.name == name } }

    /// The sum over every label set; nil when the process does not report it.
    func total(_ name: String) -> Double? {
        let matching = series(name)
        return matching.isEmpty ? nil : matching.reduce(0) { $0 + $1.value }
    }
}
