import ArgumentParser
import Logging

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
