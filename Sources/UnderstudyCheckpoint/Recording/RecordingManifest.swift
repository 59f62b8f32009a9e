import Foundation
import UnderstudyMachine

/// What a recording needs besides its checkpoints and log to be replayed on its own: which
/// module (a copy sits beside it) and how the machine was configured.
public struct RecordingManifest: Codable, Equatable, Sendable {
    public static let fileName = "manifest.json"
    public static let moduleFileName = "module.wasm"
    public static let currentVersion = 1

    public var version: Int
    /// SHA-256 of the prepared module; the module file is the guest as given, prepared again on
    /// replay (preparation is deterministic and the hash is checked).
    public var moduleHash: String
    public var arguments: [String]
    public var environment: [String]
    public var listenerCount: Int
    /// Absent in recordings made before machines had a limit: those ran with the default.
    public var memoryLimitBytes: UInt64?

    public init(moduleHash: String, configuration: MachineConfiguration) {
        version = Self.currentVersion
        self.moduleHash = moduleHash
        arguments = configuration.arguments
        environment = configuration.environment
        listenerCount = configuration.listenerCount
        memoryLimitBytes = configuration.memoryLimitBytes
    }

    /// The machine this manifest describes, as a replay, a restore or a backup builds it.
    public var configuration: MachineConfiguration {
        MachineConfiguration(
            arguments: arguments, environment: environment, listenerCount: listenerCount,
            memoryLimitBytes: memoryLimitBytes ?? MachineConfiguration.defaultMemoryLimit)
    }

    /// Writes the manifest and a copy of the module into `directory`.
    public func write(to directory: URL, module: URL) throws(CheckpointError) {
        do {
            let moduleCopy = directory.appendingPathComponent(Self.moduleFileName)
            if FileManager.default.fileExists(atPath: moduleCopy.path) { try FileManager.default.removeItem(at: moduleCopy) }
            try FileManager.default.copyItem(at: module, to: moduleCopy)
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            try encoder.encode(self).write(to: directory.appendingPathComponent(Self.fileName), options: .atomic)
        } catch {
            throw .unreadable("cannot write the recording's manifest in \(directory.path): \((error as NSError).localizedDescription)")
        }
    }

    public static func read(from directory: URL) throws(CheckpointError) -> RecordingManifest {
        let url = directory.appendingPathComponent(fileName)
        let manifest: RecordingManifest
        do {
            manifest = try JSONDecoder().decode(RecordingManifest.self, from: Data(contentsOf: url))
        } catch let error as DecodingError {
            throw .malformed("\(url.path) is not a recording manifest: \(error)")
        } catch {
            throw .unreadable("\(url.path): \((error as NSError).localizedDescription)")
        }
        guard manifest.version == currentVersion else {
            throw .malformed("\(url.path) has version \(manifest.version); this build reads version \(currentVersion)")
        }
        return manifest
    }
}
