import ArgumentParser
import Foundation
import UnderstudyCheckpoint
import UnderstudyCore
import UnderstudyMachine

struct RestoreCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore",
        abstract: "Restore a recorded checkpoint in this (fresh) process and keep serving.",
        discussion: """
            Applies the full checkpoint and the deltas after it up to the one chosen, then resumes \
            the guest where it was suspended. Client connections open at the checkpoint are gone: \
            the guest sees them fail and closes them; clients reconnect.
            """
    )

    @Argument(help: "The guest module the recording was made with (its hash is checked).")
    var module: String

    @Option(name: .long, help: "The directory `understudy run --record` wrote.")
    var from: String

    @Option(name: .long, help: "Checkpoint sequence number to restore (default: the latest).")
    var checkpoint: Int?

    @Option(name: .long, help: "HOST:PORT to listen on, as many as the recorded run had.")
    var listen: [String] = []

    @Option(name: .long, help: "Keep recording into this directory, as `run --record` does.")
    var record: String?

    @Option(name: .long, help: "Interval between checkpoints with --record, like 200ms or 1s (default 200ms).")
    var checkpointEvery: DurationArgument?

    @OptionGroup var metrics: MetricsOption

    @OptionGroup var engine: EngineOption

    @OptionGroup var logging: LoggingOptions

    func validate() throws {
        _ = try ServiceAddress.listenAddresses(listen)
    }

    func run() throws {
        try engine.choose()
        let addresses = try ServiceAddress.listenAddresses(listen)
        let launch = MachineLaunch(
            module: module, listen: addresses, logger: logging.bootstrap(label: "understudy.restore"), metrics: try metrics.address())
        // The recorded run's memory limit, from its manifest; the default for checkpoints without one.
        let recorded = try? RecordingManifest.read(from: URL(fileURLWithPath: from))
        let configuration = MachineConfiguration(
            arguments: [], listenerCount: addresses.count,
            memoryLimitBytes: recorded?.memoryLimitBytes ?? MachineConfiguration.defaultMemoryLimit)
        try launch.serve(recordTo: record, checkpointEvery: checkpointEvery?.duration, configuration: configuration) {
            prepared, world, live, suspension in
            let (sequence, state, _) = try CheckpointDirectory(URL(fileURLWithPath: from)).state(
                at: checkpoint, moduleHash: prepared.hash)
            launch.logger.notice("restoring", metadata: ["checkpoint": "\(sequence)", "memoryBytes": "\(state.memory.count)"])
            live.reserveConnections(through: state.descriptors.highestConnection)
            return try Machine(restoring: state, prepared: prepared, world: world, suspension: suspension, configuration: configuration)
        }
    }
}
