import ArgumentParser
import Foundation
import UnderstudyCheckpoint

struct ReplayCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "replay",
        abstract: "Re-execute a recording from one of its checkpoints, answering the guest from the event log.",
        discussion: """
            Nothing is sent anywhere; every output the replayed guest makes is compared with the one \
            recorded at the same log position. With --verify, the replayed machine is also compared \
            (memory, globals, descriptors) with every later checkpoint when it reaches that \
            checkpoint's log position. Exits non-zero on the first divergence, naming the \
            checkpoint, the page or global, and the log position.
            """
    )

    @Argument(help: "The directory `understudy run --record` wrote.")
    var directory: String

    @Flag(name: .long, help: "Compare the replayed machine with every later checkpoint.")
    var verify = false

    @Option(name: .long, help: "Checkpoint sequence number to start from (default: the first).")
    var fromCheckpoint: Int?

    @OptionGroup var engine: EngineOption

    @OptionGroup var logging: LoggingOptions

    func validate() throws {
        if let fromCheckpoint, fromCheckpoint < 1 { throw ValidationError("--from-checkpoint must be 1 or more") }
    }

    func run() throws {
        let logger = logging.bootstrap(label: "understudy.replay")
        try engine.choose()
        let verifier = ReplayVerifier(directory: URL(fileURLWithPath: directory))
        do {
            let report = try verifier.replay(from: fromCheckpoint, verify: verify) { sequence in
                logger.info("checkpoint verified", metadata: ["sequence": "\(sequence)"])
            }
            let seconds = Double(report.elapsedNanos) / 1e9
            let entries = report.endPosition - report.startPosition
            var summary = "replayed log entries \(report.startPosition)..<\(report.endPosition) of \(report.logEntries)"
            summary += " from checkpoint \(report.startCheckpoint) in \(String(format: "%.2f", seconds)) s"
            summary += " (\(Int(Double(entries) / max(seconds, 1e-9))) entries/s)"
            summary += "; outputs match: \(report.verifiedOutputBytes) bytes"
            if verify { summary += "; checkpoints verified: \(report.checkpointsVerified)" }
            if let code = report.exitCode { summary += "; the guest exited with \(code)" }
            print(summary)
        } catch {
            FileHandle.standardError.write(Data("understudy: \(error)\n".utf8))
            throw ExitCode(1)
        }
    }
}
