import Foundation

/// Keeps the cache directory (prepared modules, their digests, wasmtime's compiled modules)
/// within a size: every module a user ever ran, under every preparation version and engine
/// version, would otherwise stay there for good. After each write the least recently used files
/// go first; a hit touches its file, so "used" means read or written. A file removed while
/// another process wants it is only that process's miss: it prepares or compiles again.
public enum ModuleCacheLimit {
    /// `UNDERSTUDY_CACHE_MIB`, else 1 GiB.
    public static var limitBytes: Int {
        if let text = ProcessInfo.processInfo.environment["UNDERSTUDY_CACHE_MIB"], let mebibytes = Int(text), mebibytes > 0 {
            return mebibytes << 20
        }
        return 1 << 30
    }

    /// `url` was just used: it is the last to go.
    static func touch(_ url: URL) {
        try? FileManager.default.setAttributes([.modificationDate: Date()], ofItemAtPath: url.path)
    }

    /// Removes the least recently used files of `directory` until what is left is within
    /// `limit` bytes; `kept` (what was just written) stays even if it alone is larger.
    static func trim(_ directory: URL, to limit: Int = limitBytes, keeping kept: Set<String>) {
        let keys: [URLResourceKey] = [.fileSizeKey, .contentModificationDateKey, .isRegularFileKey]
        guard let names = try? FileManager.default.contentsOfDirectory(at: directory, includingPropertiesForKeys: keys) else { return }
        var files: [(url: URL, bytes: Int, used: Date)] = []
        for url in names {
            // Another process's file being written (`writeReplacing`'s temporary) is not an entry yet.
            guard !url.lastPathComponent.hasPrefix("."),
                let values = try? url.resourceValues(forKeys: Set(keys)), values.isRegularFile == true
            else { continue }
            files.append((url, values.fileSize ?? 0, values.contentModificationDate ?? .distantPast))
        }
        var total = files.reduce(0) { $0 + $1.bytes }
        for file in files.sorted(by: { $0.used < $1.used }) where total > limit && !kept.contains(file.url.lastPathComponent) {
            guard (try? FileManager.default.removeItem(at: file.url)) != nil else { continue }
            total -= file.bytes
        }
    }
}
