import ArgumentParser
import Foundation
import UnderstudyCore
import UnderstudyMachine

struct RunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run a guest unprotected (the `none` mode): the baseline every other mode is measured against."
    )

    @Argument(help: "The guest: a wasm32-wasi command module.")
    var module: String

    @Option(name: .long, help: "HOST:PORT to listen on; repeat for more. The first becomes the guest's fd 3.")
    var listen: [String] = []

    @Option(name: .long, help: "Record into this empty directory: the event log, and a checkpoint at every --checkpoint-every (full first, then changed pages). `understudy replay DIR --verify` checks it.")
    var record: String?

    @Option(name: .long, help: "Interval between checkpoints with --record, like 200ms or 1s (default 200ms).")
    var checkpointEvery: DurationArgument?

    @Flag(
        name: .long,
        help: "Unwind the guest's stack at every host call that may block, not only when a checkpoint is due (to measure what suspension costs).")
    var suspendAtEveryBlock = false

    @OptionGroup var metrics: MetricsOption

    @OptionGroup var engine: EngineOption

    @OptionGroup var logging: LoggingOptions

    @OptionGroup var guest: GuestOptions

    func validate() throws {
        _ = try ServiceAddress.listenAddresses(listen)
        if checkpointEvery != nil && record == nil { throw ValidationError("--checkpoint-every needs --record DIR") }
    }

    func run() throws {
        try engine.choose()
        let addresses = try ServiceAddress.listenAddresses(listen)
        let launch = MachineLaunch(
            module: module, listen: addresses, logger: logging.bootstrap(label: "understudy.run"), metrics: try metrics.address())
        let configuration = guest.configuration(
            module: module, listenerCount: addresses.count, suspendAtEveryBlock: suspendAtEveryBlock)
        try launch.serve(recordTo: record, checkpointEvery: checkpointEvery?.duration, configuration: configuration) {
            prepared, world, _, suspension in
            try Machine(prepared: prepared, world: world, suspension: suspension, configuration: configuration)
        }
    }
}
