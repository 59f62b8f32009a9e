import ArgumentParser
import Dispatch
import Foundation
import Logging
import UnderstudyCheckpoint
import UnderstudyCore
import UnderstudyMachine

/// What `run` and `restore` share: opening the listeners, building the machine, recording
/// checkpoints on a timer, and turning failures into one line and an exit status.
struct MachineLaunch {
    var module: String
    var listen: [ServiceAddress]
    var logger: Logger
    /// Where to serve the Prometheus metrics (`--metrics`), if anywhere.
    var metrics: ServiceAddress? = nil

    /// Prepares the module, opens the world and builds the machine with `make` (on the world it
    /// is given: the live one, or a recording of it); runs it until the guest exits and throws
    /// its exit status.
    func serve(
        recordTo directory: String?, checkpointEvery interval: Duration?, configuration: MachineConfiguration,
        make: (PreparedModule, MachineWorld, LiveWorld, SuspensionRequest) throws -> Machine
    ) throws -> Never {
        do {
            let endpoint = try metrics.map(MetricsEndpoint.init(address:))
            defer { endpoint?.close() }
            let prepared = try ModulePreparer().prepare(path: module)
            let suspension = SuspensionRequest()
            let live = try LiveWorld(listening: listen, suspension: suspension)
            var session: RecordingSession?
            if let directory {
                let manifest = RecordingManifest(moduleHash: prepared.hash, configuration: configuration)
                session = try RecordingSession(
                    directory: URL(fileURLWithPath: directory), module: URL(fileURLWithPath: module), manifest: manifest,
                    recording: live)
            }
            let machine = try make(prepared, session?.world ?? live, live, suspension)
            var timer: DispatchSourceTimer?
            if let session {
                if !session.tracksDirtyPagesInKernel { logger.warning("userfaultfd is unavailable: dirty pages are found by hashing") }
                let logger = self.logger
                session.onCheckpoint = { taken in
                    logger.info(
                        "checkpoint",
                        metadata: [
                            "sequence": "\(taken.sequence)", "pages": "\(taken.pages)", "logPosition": "\(taken.logPosition)",
                            "captureMicros": "\(taken.captureNanos / 1000)",
                        ])
                }
                session.attach(to: machine)
                timer = Self.requestEvery(interval ?? .milliseconds(200), suspension)
            }
            logger.notice(
                "serving",
                metadata: [
                    "guest": "\(URL(fileURLWithPath: module).lastPathComponent)", "module": "\(prepared.hash.prefix(16))",
                    "listen": "\(listen.map(\.description).joined(separator: ","))", "engine": "\(configuration.engine.rawValue)",
                ])
            let code: Int32
            do {
                code = try machine.run()
            } catch {
                try? session?.finish()
                throw error
            }
            timer?.cancel()
            try session?.finish()
            if machine.statistics.count > 0 {
                let stats = machine.statistics
                logger.notice(
                    "suspensions",
                    metadata: [
                        "count": "\(stats.count)", "meanPauseMicros": "\(stats.totalPauseNanos / UInt64(stats.count) / 1000)",
                        "maxPauseMicros": "\(stats.maxPauseNanos / 1000)",
                    ])
            }
            throw ExitCode(code)
        } catch let exit as ExitCode {
            throw exit
        } catch {
            throw failure(error)
        }
    }

    private static func requestEvery(_ interval: Duration, _ suspension: SuspensionRequest) -> DispatchSourceTimer {
        let nanos = Int(interval.nanoseconds)
        let timer = DispatchSource.makeTimerSource(queue: .global())
        timer.schedule(deadline: .now() + .nanoseconds(nanos), repeating: .nanoseconds(nanos))
        timer.setEventHandler { suspension.request() }
        timer.resume()
        return timer
    }
}

/// The guest's environment and arguments, shared by `run` and `primary`.
struct GuestOptions: ParsableArguments {
    @Option(name: .long, help: "KEY=VALUE added to the guest's environment; repeat for more.")
    var env: [String] = []

    @OptionGroup var memory: MemoryLimitOption

    @Argument(parsing: .postTerminator, help: "Arguments for the guest, after --.")
    var guestArguments: [String] = []

    func validate() throws {
        for pair in env where !pair.contains("=") { throw ValidationError("--env '\(pair)' is not KEY=VALUE") }
    }

    /// The machine's configuration for `module` with `listenerCount` listeners.
    func configuration(module: String, listenerCount: Int, suspendAtEveryBlock: Bool = false) -> MachineConfiguration {
        MachineConfiguration(
            arguments: [URL(fileURLWithPath: module).lastPathComponent] + guestArguments, environment: env,
            listenerCount: listenerCount, suspendAtEveryBlock: suspendAtEveryBlock, memoryLimitBytes: memory.memoryLimit.bytes)
    }
}

/// What a command refuses to do, in one line (not a usage error: the flags were well formed).
struct CommandError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// A failure of a command that runs a machine: one line on stderr, exit status 1.
func failure(_ error: Error) -> ExitCode {
    FileHandle.standardError.write(Data("understudy: \(error)\n".utf8))
    return ExitCode(1)
}

/// `--metrics HOST:PORT`, shared by the commands that run a machine.
struct MetricsOption: ParsableArguments {
    @Option(name: .long, help: "Serve Prometheus metrics (suspension pauses, checkpoints) at http://HOST:PORT/metrics.")
    var metrics: String?

    func address() throws -> ServiceAddress? {
        guard let metrics else { return nil }
        do { return try ServiceAddress(parsing: metrics) } catch { throw ValidationError("--metrics \(error)") }
    }

    func validate() throws { _ = try address() }
}

extension ServiceAddress {
    /// `--listen` values, with the flag named in the error ArgumentParser prints.
    static func listenAddresses(_ values: [String]) throws -> [ServiceAddress] {
        try values.map { value in
            do { return try ServiceAddress(parsing: value) } catch { throw ValidationError("--listen \(error)") }
        }
    }
}

/// `64MiB`, `1GiB`, `4GiB`, `65536` (bytes) as a command-line value.
struct ByteCountArgument: ExpressibleByArgument, CustomStringConvertible {
    let bytes: UInt64

    var description: String {
        for (suffix, scale) in [("GiB", UInt64(1 << 30)), ("MiB", 1 << 20), ("KiB", 1 << 10)] where bytes >= scale && bytes % scale == 0 {
            return "\(bytes / scale)\(suffix)"
        }
        return "\(bytes)"
    }
    var defaultValueDescription: String { description }

    init?(argument: String) {
        let units: [(String, UInt64)] = [("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30), ("", 1)]
        guard let (suffix, scale) = units.first(where: { argument.hasSuffix($0.0) }),
            let value = UInt64(argument.dropLast(suffix.count)), value <= UInt64(1 << 40) / scale
        else { return nil }
        bytes = value * scale
    }
}

/// The machine's RAM: `run`, `primary` and `restore` take it; a backup is told its primary's.
struct MemoryLimitOption: ParsableArguments {
    @Option(
        name: .long,
        help: ArgumentHelp(
            "The most linear memory the guest may have: 64KiB…4GiB in whole 64 KiB pages. A memory.grow past it fails; a backup is told it, and it bounds every replication frame.",
            valueName: "BYTES"))
    var memoryLimit: ByteCountArgument = ByteCountArgument(argument: "1GiB")!

    func validate() throws {
        if let problem = MachineConfiguration.problem(withMemoryLimit: memoryLimit.bytes) { throw ValidationError("--memory-limit: \(problem)") }
    }
}

/// `200ms`, `1s`, `2.5s`, `500us` as a command-line value.
struct DurationArgument: ExpressibleByArgument {
    let duration: Duration

    init?(argument: String) {
        let units: [(String, Double)] = [("ms", 1e-3), ("us", 1e-6), ("s", 1)]
        guard let (suffix, scale) = units.first(where: { argument.hasSuffix($0.0) }),
            let value = Double(argument.dropLast(suffix.count)), value > 0, value * scale <= 3600
        else { return nil }
        duration = .nanoseconds(Int64(value * scale * 1e9))
    }
}
