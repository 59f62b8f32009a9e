import Foundation
import WAT
import UnderstudyCore
import WasmKit
import XCTest

@testable import UnderstudyMachine

final class ModulePreparationTests: XCTestCase {
    func testMalformedModuleIsRefusedWithReason() {
        XCTAssertThrowsError(try Fixtures.preparer().prepare(bytes: [0x00, 0x61, 0x73, 0x6d, 0x01, 0, 0, 0, 0x01, 0xff])) { error in
            guard case ModulePreparationError.invalid = error else { return XCTFail("\(error)") }
            XCTAssertTrue("\(error)".hasPrefix("not a valid WebAssembly module"), "\(error)")
        }
        XCTAssertThrowsError(try Fixtures.preparer().prepare(bytes: Array("hello".utf8)))
    }

    func testImportWeDoNotOfferIsNamed() throws {
        let fileSystem = try wat2wasm(
            #"(module (import "wasi_snapshot_preview1" "path_open" (func (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32))) (memory (export "memory") 1) (func (export "_start")))"#)
        XCTAssertThrowsError(try Fixtures.preparer().prepare(bytes: fileSystem)) { error in
            XCTAssertEqual(error as? ModulePreparationError, .unsupportedImport(module: "wasi_snapshot_preview1", name: "path_open"))
            XCTAssertEqual("\(error)", "the guest imports wasi_snapshot_preview1.path_open, which understudy does not offer")
        }
        let foreign = try wat2wasm(#"(module (import "env" "magic" (func)) (memory (export "memory") 1) (func (export "_start")))"#)
        XCTAssertThrowsError(try Fixtures.preparer().prepare(bytes: foreign)) { error in
            XCTAssertEqual(error as? ModulePreparationError, .unsupportedImport(module: "env", name: "magic"))
        }
    }

    func testReactorWithoutStartIsRefused() throws {
        let reactor = try wat2wasm(#"(module (memory (export "memory") 1) (func (export "init")))"#)
        XCTAssertThrowsError(try Fixtures.preparer().prepare(bytes: reactor)) { error in
            XCTAssertEqual(error as? ModulePreparationError, .missingExport("_start"))
        }
    }

    func testEveryMutableGlobalIsExportedAndConstantsAreNot() throws {
        let source = try wat2wasm(
            #"""
            (module
              (global $sp (export "__stack_pointer") (mut i32) (i32.const 1024))
              (global $hidden (mut i64) (i64.const 7))
              (global $constant i32 (i32.const 3))
              (global $other (mut f64) (f64.const 2.5))
              (memory (export "memory") 1)
              (func (export "_start") (global.set $hidden (i64.const 8))))
            """#)
        let rewritten = try GlobalExporter.exportMutableGlobals(source)
        let module = try parseWasm(bytes: rewritten)
        let globalExports = module.exports.compactMap { export -> String? in
            if case .global = export.descriptor { return export.name }
            return nil
        }
        XCTAssertEqual(
            Set(globalExports),
            ["__stack_pointer", GlobalExporter.exportedGlobalPrefix + "1", GlobalExporter.exportedGlobalPrefix + "3"])
        XCTAssertEqual(try GlobalExporter.exportMutableGlobals(rewritten), rewritten, "already complete: unchanged")
    }

    func testPreparedGuestIsAsyncifiedAndCached() throws {
        let first = try Fixtures.guest("echo")
        let names = Set(first.module.exports.map(\.name))
        for name in ["asyncify_start_unwind", "asyncify_stop_unwind", "asyncify_start_rewind", "asyncify_stop_rewind"] {
            XCTAssertTrue(names.contains(name), name)
        }
        XCTAssertTrue(names.contains { $0.hasPrefix(GlobalExporter.exportedGlobalPrefix) }, "Asyncify's own globals are exported")
        let again = try Fixtures.guest("echo")
        XCTAssertEqual(first.hash, again.hash)
        XCTAssertEqual(first.hash.count, 64)
    }

    /// A prepared module is kept: a second preparation with no wasm-opt at all is served from the
    /// cache. A damaged entry (a flipped byte, a missing digest) is noticed and prepared again.
    func testCacheKeepsPreparedModulesAndRebuildsDamagedOnes() throws {
        let cache = FileManager.default.temporaryDirectory.appendingPathComponent("understudy-cache-test-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: cache) }
        let original = Array(try Data(contentsOf: Fixtures.guests.appendingPathComponent("echo.wasm")))
        let first = try ModulePreparer(cacheDirectory: cache).prepare(bytes: original)
        let entries = try FileManager.default.contentsOfDirectory(atPath: cache.path).sorted()
        XCTAssertEqual(entries.count, 2, "the module and its digest, no temporary left: \(entries)")
        let withoutWasmOpt = ModulePreparer(cacheDirectory: cache, wasmOptPath: "/nonexistent/wasm-opt")
        XCTAssertEqual(try withoutWasmOpt.prepare(bytes: original).hash, first.hash, "served from the cache")

        let entry = cache.appendingPathComponent(try XCTUnwrap(entries.first { $0.hasSuffix(".wasm") }))
        var damaged = first.bytes
        damaged[damaged.count / 2] ^= 0x40
        try Data(damaged).write(to: entry)
        XCTAssertThrowsError(try withoutWasmOpt.prepare(bytes: original), "a damaged entry must not be served") { error in
            XCTAssertTrue("\(error)".contains("wasm-opt"), "\(error)")
        }
        XCTAssertEqual(try ModulePreparer(cacheDirectory: cache).prepare(bytes: original).hash, first.hash, "prepared again")
        XCTAssertEqual(Array(try Data(contentsOf: entry)), first.bytes, "and the entry rewritten")
        try FileManager.default.removeItem(at: ModulePreparer.digestURL(of: entry))
        XCTAssertThrowsError(try withoutWasmOpt.prepare(bytes: original), "an entry without its digest is a miss")
    }

    /// The cache stays within its size: the least recently used files go first after a write,
    /// a hit counts as a use, and what was just written stays.
    func testTheCacheKeepsItsSizeAndLetsTheLeastRecentlyUsedGo() throws {
        let cache = FileManager.default.temporaryDirectory.appendingPathComponent("understudy-cache-limit-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: cache) }
        try FileManager.default.createDirectory(at: cache, withIntermediateDirectories: true)
        func write(_ name: String, _ bytes: Int, daysAgo: Double) throws {
            let url = cache.appendingPathComponent(name)
            try Data(repeating: 1, count: bytes).write(to: url)
            try FileManager.default.setAttributes([.modificationDate: Date(timeIntervalSinceNow: -daysAgo * 86_400)], ofItemAtPath: url.path)
        }
        try write("oldest.cwasm", 400, daysAgo: 3)
        try write("older.wasm", 400, daysAgo: 2)
        try write("old.wasm", 400, daysAgo: 1)
        try write(".in-progress.tmp", 400, daysAgo: 4)  // another process's write: not an entry
        ModuleCacheLimit.touch(cache.appendingPathComponent("oldest.cwasm"))  // just used
        try write("new.wasm", 500, daysAgo: 0)
        ModuleCacheLimit.trim(cache, to: 1_000, keeping: ["new.wasm"])
        XCTAssertEqual(
            Set(try FileManager.default.contentsOfDirectory(atPath: cache.path)), ["oldest.cwasm", "new.wasm", ".in-progress.tmp"],
            "the two least recently used went; the one just read and the one just written stayed")
        ModuleCacheLimit.trim(cache, to: 100, keeping: ["new.wasm"])
        XCTAssertEqual(Set(try FileManager.default.contentsOfDirectory(atPath: cache.path)), ["new.wasm", ".in-progress.tmp"])

        // Preparation trims after it writes: a stale entry larger than the limit goes.
        let original = Array(try Data(contentsOf: Fixtures.guests.appendingPathComponent("echo.wasm")))
        setenv("UNDERSTUDY_CACHE_MIB", "1", 1)
        defer { unsetenv("UNDERSTUDY_CACHE_MIB") }
        try write("stale.wasm", 2 << 20, daysAgo: 5)
        _ = try ModulePreparer(cacheDirectory: cache).prepare(bytes: original)
        let left = try FileManager.default.contentsOfDirectory(atPath: cache.path)
        XCTAssertFalse(left.contains("stale.wasm"), "\(left)")
        XCTAssertEqual(left.filter { $0.count > 64 && !$0.hasPrefix(".") }.count, 2, "the prepared module and its digest: \(left)")
    }

    /// The backup's way in: bytes are checked against the named hash before anything else, and
    /// must be a prepared module.
    func testAdoptingAPreparedModuleChecksItsHashFirst() throws {
        let prepared = try Fixtures.guest("echo")
        XCTAssertEqual(try ModulePreparer.adopt(prepared: prepared.bytes, hash: prepared.hash).hash, prepared.hash)
        let other = String(repeating: "ab", count: 32)
        XCTAssertThrowsError(try ModulePreparer.adopt(prepared: [0, 1, 2], hash: other)) { error in
            XCTAssertEqual(error as? ModulePreparationError, .hashMismatch(expected: other, found: SHA256.hex(of: [0, 1, 2])))
        }
        let original = Array(try Data(contentsOf: Fixtures.guests.appendingPathComponent("echo.wasm")))
        XCTAssertThrowsError(try ModulePreparer.adopt(prepared: original, hash: SHA256.hex(of: original))) { error in
            XCTAssertEqual("\(error)", "the module is not a prepared module: it does not export asyncify_start_unwind")
        }
    }

    func testTruncatedBinaryIsReportedNotCrashed() {
        XCTAssertThrowsError(try WasmBinaryReader.sections(of: WasmBinaryReader.header + [0x01, 0x80])) { error in
            XCTAssertTrue("\(error)".contains("ends early"), "\(error)")
        }
    }
}

final class DescriptorTableTests: XCTestCase {
    func testListenersFollowStdioAndNewDescriptorsTakeTheLowestFree() throws {
        var table = DescriptorTable(listenerCount: 2)
        XCTAssertEqual(try table.entry(3).kind, .listener(.init(0)))
        XCTAssertEqual(try table.entry(4).kind, .listener(.init(1)))
        let a = try table.insert(.init(kind: .connection(.init(1)), nonblocking: true))
        let b = try table.insert(.init(kind: .connection(.init(2)), nonblocking: true))
        XCTAssertEqual([a, b], [5, 6])
        try table.remove(a)
        XCTAssertThrowsError(try table.entry(a)) { XCTAssertEqual($0 as? WASIErrno, .badf) }
        XCTAssertEqual(try table.insert(.init(kind: .connection(.init(3)), nonblocking: false)), 5)
        XCTAssertEqual(table.openConnections, [.init(3), .init(2)])
        XCTAssertThrowsError(try table.entry(99)) { XCTAssertEqual($0 as? WASIErrno, .badf) }
    }

    func testDescriptorBoundGivesEMFILE() throws {
        var table = DescriptorTable(listenerCount: 0)
        for index in 3..<DescriptorTable.descriptorsMax {
            _ = try table.insert(.init(kind: .connection(.init(UInt64(index))), nonblocking: true))
        }
        XCTAssertThrowsError(try table.insert(.init(kind: .connection(.init(0)), nonblocking: true))) {
            XCTAssertEqual($0 as? WASIErrno, .mfile)
        }
    }
}
