import ArgumentParser
import Foundation
import Logging
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

    @Option(name: .long, help: "KEY=VALUE added to the guest's environment; repeat for more.")
    var env: [String] = []

    @Flag(
        name: .long,
        help: "Unwind the guest's stack at every host call that may block, not only when a checkpoint is due (to measure what suspension costs).")
    var suspendAtEveryBlock = false

    @OptionGroup var logging: LoggingOptions

    @Argument(parsing: .postTerminator, help: "Arguments for the guest, after --.")
    var guestArguments: [String] = []

    func validate() throws {
        for address in listen {
            do { _ = try ServiceAddress(parsing: address) } catch { throw ValidationError("--listen \(error)") }
        }
        for pair in env where !pair.contains("=") {
            throw ValidationError("--env '\(pair)' is not KEY=VALUE")
        }
    }

    func run() throws {
        let logger = logging.bootstrap(label: "understudy.run")
        let addresses = try listen.map { try ServiceAddress(parsing: $0) }
        do {
            let prepared = try ModulePreparer().prepare(path: module)
            let suspension = SuspensionRequest()
            let world = try LiveWorld(listening: addresses, suspension: suspension)
            let name = URL(fileURLWithPath: module).lastPathComponent
            let machine = try Machine(
                prepared: prepared, world: world, suspension: suspension,
                configuration: MachineConfiguration(
                    arguments: [name] + guestArguments, environment: env, listenerCount: addresses.count,
                    suspendAtEveryBlock: suspendAtEveryBlock))
            logger.notice(
                "serving",
                metadata: [
                    "guest": "\(name)", "module": "\(prepared.hash.prefix(16))",
                    "listen": "\(addresses.map(\.description).joined(separator: ","))",
                ])
            let code = try machine.run()
            if suspendAtEveryBlock {
                let stats = machine.statistics
                logger.notice(
                    "suspensions",
                    metadata: [
                        "count": "\(stats.count)",
                        "meanMicros": "\(stats.count == 0 ? 0 : stats.totalPauseNanos / UInt64(stats.count) / 1000)",
                        "maxMicros": "\(stats.maxPauseNanos / 1000)",
                    ])
            }
            throw ExitCode(code)
        } catch let error as ExitCode {
            throw error
        } catch {
            FileHandle.standardError.write(Data("understudy: \(error)\n".utf8))
            throw ExitCode(1)
        }
    }
}
