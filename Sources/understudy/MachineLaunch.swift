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

    /// Prepares the module, opens the world and builds the machine with `make`; runs it until the
    /// guest exits and throws its exit status.
    func serve(
        recordTo directory: String?, checkpointEvery interval: Duration?,
        make: (PreparedModule, LiveWorld, SuspensionRequest) throws -> Machine
    ) throws -> Never {
        do {
            let prepared = try ModulePreparer().prepare(path: module)
            let suspension = SuspensionRequest()
            let world = try LiveWorld(listening: listen, suspension: suspension)
            let machine = try make(prepared, world, suspension)
            var timer: DispatchSourceTimer?
            if let directory {
                var recorder = try CheckpointRecorder(directory: URL(fileURLWithPath: directory), moduleHash: prepared.hash)
                let logger = self.logger
                let kernelTracker: UserfaultDirtyTracker?
                do {
                    kernelTracker = try UserfaultDirtyTracker()
                } catch {
                    logger.warning("dirty pages found by hashing instead", metadata: ["reason": "\(error)"])
                    kernelTracker = nil
                }
                machine.onSuspended = { machine in
                    let dirty = try kernelTracker.map { tracker in try machine.withLinearMemory { try tracker.dirtyPages(of: $0) } }
                    let pages = try recorder.record(machine.captureState(), dirtyPages: dirty)
                    logger.info("checkpoint", metadata: ["sequence": "\(recorder.written)", "pages": "\(pages)"])
                }
                timer = Self.requestEvery(interval ?? .milliseconds(200), suspension)
            }
            logger.notice(
                "serving",
                metadata: [
                    "guest": "\(URL(fileURLWithPath: module).lastPathComponent)", "module": "\(prepared.hash.prefix(16))",
                    "listen": "\(listen.map(\.description).joined(separator: ","))",
                ])
            let code = try machine.run()
            timer?.cancel()
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
            FileHandle.standardError.write(Data("understudy: \(error)\n".utf8))
            throw ExitCode(1)
        }
    }

    private static func requestEvery(_ interval: Duration, _ suspension: SuspensionRequest) -> DispatchSourceTimer {
        let nanos = Int(interval.components.seconds) * 1_000_000_000 + Int(interval.components.attoseconds / 1_000_000_000)
        let timer = DispatchSource.makeTimerSource(queue: .global())
        timer.schedule(deadline: .now() + .nanoseconds(nanos), repeating: .nanoseconds(nanos))
        timer.setEventHandler { suspension.request() }
        timer.resume()
        return timer
    }
}

extension ServiceAddress {
    /// `--listen` values, with the flag named in the error ArgumentParser prints.
    static func listenAddresses(_ values: [String]) throws -> [ServiceAddress] {
        try values.map { value in
            do { return try ServiceAddress(parsing: value) } catch { throw ValidationError("--listen \(error)") }
        }
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
