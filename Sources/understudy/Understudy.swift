import ArgumentParser
import Foundation
import Logging
import UnderstudyMachine

@main
struct Understudy: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "understudy",
        abstract: "A virtual machine monitor whose WebAssembly machines survive the death of their host.",
        discussion: """
            Guests are wasm32-wasi command modules (ordinary C servers). Each --listen address is a \
            TCP listener the host opens and hands to the guest as fd 3, 4, ... (the \
            `wasmtime run --tcplisten` convention).
            """,
        subcommands: [RunCommand.self, PrimaryCommand.self, BackupCommand.self, MigrateCommand.self, StatusCommand.self, RestoreCommand.self, ReplayCommand.self]
    )
}

/// Options every subcommand shares.
struct LoggingOptions: ParsableArguments {
    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .notice

    func bootstrap(label: String) -> Logger {
        let level = logLevel
        LoggingSystem.bootstrap { name in
            var handler = StreamLogHandler.standardError(label: name)
            handler.logLevel = level
            return handler
        }
        return Logger(label: label)
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}

extension GuestEngineKind: ExpressibleByArgument {}

/// `--engine`, for every command that runs a machine. The choice is this process's: a backup
/// may run its machine on another engine than its primary does.
struct EngineOption: ParsableArguments {
    @Option(
        name: .long,
        help: "What runs the guest's code: wasmtime (compiled by Cranelift; needs wasmtime's library, which setup installs) or wasmkit (WasmKit's interpreter, always there). Default: UNDERSTUDY_ENGINE, else wasmtime where its library loads, else wasmkit.")
    var engine: GuestEngineKind?

    func validate() throws {
        if let engine, let reason = engine.unavailability { throw ValidationError("--engine \(engine.rawValue): \(reason)") }
        // An engine named in the environment that is not one would otherwise be passed over in silence.
        let variable = GuestEngineKind.environmentVariable
        if engine == nil, let named = ProcessInfo.processInfo.environment[variable], !named.isEmpty {
            guard let kind = GuestEngineKind(rawValue: named) else {
                throw ValidationError("\(variable)=\(named): not an engine (wasmtime or wasmkit)")
            }
            if let reason = kind.unavailability { throw ValidationError("\(variable)=\(named): \(reason)") }
        }
    }

    /// Makes the engine asked for this process's.
    func choose() throws {
        if let engine { try GuestEngineKind.choose(engine) }
    }
}
