import Foundation
import XCTest

/// Bad input gets one clear line and a non-zero exit, never a crash.
final class ErrorTests: XCTestCase {
    private func module(_ wat: String) throws -> String {
        let directory = Harness.scratch("understudy-wat")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        try wat.write(to: directory.appendingPathComponent("m.wat"), atomically: true, encoding: .utf8)
        let output = directory.appendingPathComponent("m.wasm").path
        let outcome = try Harness.run("wat2wasm", [directory.appendingPathComponent("m.wat").path, "-o", output])
        XCTAssertEqual(outcome.status, 0, outcome.stderr)
        return output
    }

    func testMalformedModule() throws {
        let path = Harness.scratch("garbage", suffix: ".wasm")
        try Data([0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, 0x0a, 0xff, 0x01]).write(to: path)
        let outcome = try Harness.understudy(["run", path.path])
        XCTAssertEqual(outcome.status, 1)
        XCTAssertTrue(outcome.stderr.hasPrefix("understudy: not a valid WebAssembly module"), outcome.stderr)
        XCTAssertEqual(outcome.stderr.split(separator: "\n").count, 1, outcome.stderr)
    }

    func testMissingFile() throws {
        let outcome = try Harness.understudy(["run", "/nonexistent/guest.wasm"])
        XCTAssertEqual(outcome.status, 1)
        XCTAssertTrue(outcome.stderr.contains("cannot read module /nonexistent/guest.wasm"), outcome.stderr)
    }

    func testImportWeDoNotOfferIsNamed() throws {
        let path = try module(
            #"(module (import "wasi_snapshot_preview1" "path_open" (func (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32))) (memory (export "memory") 1) (func (export "_start")))"#)
        let outcome = try Harness.understudy(["run", path])
        XCTAssertEqual(outcome.status, 1)
        XCTAssertEqual(
            outcome.stderr, "understudy: the guest imports wasi_snapshot_preview1.path_open, which understudy does not offer\n")
    }

    func testTakenPort() throws {
        let holder = try ServedGuest("echo")
        let outcome = try Harness.understudy(["run", try Harness.guest("echo"), "--listen", "127.0.0.1:\(holder.port)"])
        XCTAssertEqual(outcome.status, 1)
        XCTAssertTrue(
            outcome.stderr.contains("cannot listen on 127.0.0.1:\(holder.port): bind failed: Address already in use"),
            outcome.stderr)
    }

    /// An engine whose library cannot be opened is refused with the reason, before anything
    /// runs; without `--engine`, the same process falls back to WasmKit and serves.
    func testAnEngineThatCannotLoadIsRefusedWithItsReason() throws {
        let path = try module(
            #"(module (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32))) (memory (export "memory") 1) (func (export "_start") (call $exit (i32.const 4))))"#)
        let missing = ["UNDERSTUDY_CACHE": Harness.cache, "UNDERSTUDY_WASMTIME_LIBRARY": "/nonexistent/_libwasmtime.so", "UNDERSTUDY_ENGINE": ""]
        let refused = try Harness.run(try Harness.binary(), ["run", "--engine", "wasmtime", path], environment: missing)
        XCTAssertEqual(refused.status, 64, refused.stderr)
        XCTAssertTrue(refused.stderr.contains("--engine wasmtime: /nonexistent/_libwasmtime.so: cannot open shared object file"), refused.stderr)
        let fallback = try Harness.run(try Harness.binary(), ["run", path], environment: missing)
        XCTAssertEqual(fallback.status, 4, fallback.stderr)
        XCTAssertTrue(fallback.stderr.contains("engine=wasmkit"), fallback.stderr)
        let chosen = try Harness.understudy(["run", "--engine", "wasmkit", path])
        XCTAssertEqual(chosen.status, 4, chosen.stderr)
        XCTAssertTrue(chosen.stderr.contains("engine=wasmkit"), chosen.stderr)
        let misnamed = try Harness.run(try Harness.binary(), ["run", path], environment: ["UNDERSTUDY_CACHE": Harness.cache, "UNDERSTUDY_ENGINE": "v8"])
        XCTAssertEqual(misnamed.status, 64, misnamed.stderr)
        XCTAssertTrue(misnamed.stderr.contains("UNDERSTUDY_ENGINE=v8: not an engine (wasmtime or wasmkit)"), misnamed.stderr)
    }

    func testTrappingGuestGivesReasonAndNonZeroExit() throws {
        let path = try module(
            #"(module (import "wasi_snapshot_preview1" "sched_yield" (func $yield (result i32))) (memory (export "memory") 1) (func (export "_start") (drop (call $yield)) (unreachable)))"#)
        let outcome = try Harness.understudy(["run", path])
        XCTAssertNotEqual(outcome.status, 0)
        XCTAssertTrue(outcome.stderr.contains("understudy: the guest trapped:"), outcome.stderr)
        XCTAssertTrue(outcome.stderr.lowercased().contains("unreachable"), outcome.stderr)
    }

    func testGuestExitCodeIsTheProcessExitCode() throws {
        let path = try module(
            #"(module (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32))) (memory (export "memory") 1) (func (export "_start") (call $exit (i32.const 3))))"#)
        XCTAssertEqual(try Harness.understudy(["run", path]).status, 3)
    }

    func testBadFlags() throws {
        let badAddress = try Harness.understudy(["run", "x.wasm", "--listen", "nonsense"])
        XCTAssertEqual(badAddress.status, 64)
        XCTAssertTrue(badAddress.stderr.contains("'nonsense' is not HOST:PORT"), badAddress.stderr)
        let badEnv = try Harness.understudy(["run", "x.wasm", "--env", "NOVALUE"])
        XCTAssertEqual(badEnv.status, 64)
        XCTAssertTrue(badEnv.stderr.contains("is not KEY=VALUE"), badEnv.stderr)
    }

    /// A primary told its backup is at port 0 would try it forever, unprotected: refused at once.
    func testABackupAtPortZeroIsRefused() throws {
        let outcome = try Harness.understudy(["primary", try Harness.guest("kv"), "--listen", "127.0.0.1:1", "--backup", "127.0.0.1:0", "--mode", "llm", "--insecure-replication"])
        XCTAssertEqual(outcome.status, 64)
        XCTAssertTrue(outcome.stderr.contains("--backup 127.0.0.1:0 names no port (0)"), outcome.stderr)
    }

    /// The replication channel is authenticated unless the operator says otherwise: without the
    /// TLS flags (or --insecure-replication) neither side starts, and a certificate that cannot be
    /// read is named.
    func testTheReplicationChannelNeedsTLSOrAnExplicitInsecureFlag() throws {
        let kv = try Harness.guest("kv")
        let needs = "the replication channel needs --tls-cert, --tls-key and --tls-ca (or --insecure-replication)"
        for arguments in [
            ["primary", kv, "--listen", "127.0.0.1:1", "--backup", "127.0.0.1:2", "--mode", "llm"],
            ["backup", "--replication", "127.0.0.1:2"],
            ["backup", "--replication", "127.0.0.1:2", "--tls-cert", "a.pem", "--tls-key", "a.key"],
        ] {
            let outcome = try Harness.understudy(arguments)
            XCTAssertEqual(outcome.status, 64, "\(arguments)")
            XCTAssertTrue(outcome.stderr.contains(needs), "\(arguments): \(outcome.stderr)")
        }
        let certificates = try Harness.certificates()
        let missing = try Harness.understudy(
            ["backup", "--replication", "127.0.0.1:\(Harness.freePort())", "--tls-cert", "/nonexistent/node.pem", "--tls-key",
             certificates.key(), "--tls-ca", certificates.authority], timeoutSeconds: 30)
        XCTAssertEqual(missing.status, 1)
        XCTAssertTrue(missing.stderr.hasPrefix("understudy: cannot load --tls-cert /nonexistent/node.pem:"), missing.stderr)
        XCTAssertEqual(missing.stderr.split(separator: "\n").count, 1, missing.stderr)
    }

    /// A replication address this host does not have is named in one line with the system's reason.
    func testAReplicationAddressThatCannotBeBoundIsNamed() throws {
        let outcome = try Harness.understudy(["backup", "--replication", "192.0.2.1:17000", "--insecure-replication"], timeoutSeconds: 30)
        XCTAssertEqual(outcome.status, 1)
        XCTAssertEqual(
            outcome.stderr.split(separator: "\n").last.map(String.init),
            "understudy: cannot listen for a primary on 192.0.2.1:17000: Cannot assign requested address", outcome.stderr)
    }
}
