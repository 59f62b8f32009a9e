import Foundation
import Glibc
import UnderstudyCore
import UnderstudyReplication
import XCTest

/// The backup faced with a lost backup's primary, and with peers that send garbage, the wrong
/// protocol version, the wrong module or a cut checkpoint: each refused with a clear line, and
/// the machine it protects (or will protect) is unharmed.
final class ReplicationPeerTests: XCTestCase {
    private func pingProbe(_ port: UInt16) -> Bool {
        (try? Harness.run("redis-cli", ["-p", "\(port)", "PING"]))?.stdout.contains("PONG") == true
    }

    // MARK: Losing the backup

    func testPrimaryServesOnWhenItsBackupDiesThenReprotectsInLLMMode() throws { try backupKill(mode: "llm") }
    func testPrimaryServesOnWhenItsBackupDiesThenReprotectsInRemusMode() throws { try backupKill(mode: "remus") }

    private func backupKill(mode: String) throws {
        let pair = try ProtectedPair("kv", mode: mode)
        defer { pair.stop() }
        let incrementer = try ClientProcess("redis-cli", ["-p", "\(pair.servicePort)", "-r", "1000000", "-i", "0", "INCR", "counter"])
        XCTAssertEqual(try Harness.redisCLI(pair.servicePort, "SET", "before", "1"), "OK")
        usleep(200_000)
        pair.backup.kill()
        // Unprotected, the primary answers at once instead of holding replies for a backup
        // that is gone (a stall would time this client out).
        let client = try LineClient(port: pair.servicePort, timeoutSeconds: 5)
        try client.send("*3\r\n$3\r\nSET\r\n$6\r\nduring\r\n$1\r\n2\r\n")
        XCTAssertEqual(try client.readLine(), "+OK")
        try pair.primary.waitFor("generation won: serving alone", times: 2)

        try pair.restartBackup()
        try pair.primary.waitFor("the machine is protected", times: 2)
        XCTAssertEqual(try Harness.redisCLI(pair.servicePort, "SET", "after", "3"), "OK")
        usleep(100_000)
        try pair.killPrimaryAndWaitForTakeover(probe: pingProbe)
        incrementer.stop()
        XCTAssertEqual(try Harness.redisCLI(pair.servicePort, "MGET", "before", "during", "after"), "1\n2\n3")
        let increments = incrementer.output.split(separator: "\n").prefix { Int($0) != nil }.count
        let counter = try XCTUnwrap(Int(try Harness.redisCLI(pair.servicePort, "GET", "counter")), "the counter is not a number")
        XCTAssertGreaterThan(increments, 0)
        XCTAssertTrue(counter == increments || counter == increments + 1, "counter \(counter) after \(increments) acknowledged INCRs")
    }

    /// A backup being seeded protects nothing yet, so nothing waits for it: with the new backup
    /// stuck in the middle of its seed (the module taken, no checkpoint applied, still
    /// heartbeating, so neither the heartbeat nor the acknowledgement timeout gives it up), every
    /// INCR is answered and the machine is not called protected, in each mode. Once a working
    /// backup replaces it the machine is protected again, and a failover keeps every INCR.
    func testRepliesFlowWhileABackupIsBeingSeeded() throws {
        for mode in ["remus", "llm", "active"] {
            let pair = try ProtectedPair("kv", mode: mode)
            defer { pair.stop() }
            XCTAssertEqual(try Harness.redisCLI(pair.servicePort, ["INCR", "n"]), "1", mode)
            try pair.restartBackup(options: ["--inject-stall", "after-module"])
            try pair.backup.waitFor("fault injection: module taken; acknowledging nothing more")
            // redis-cli gives up after the harness's 30 s: a reply held for the seeding backup fails here.
            for expected in 2...21 { XCTAssertEqual(try Harness.redisCLI(pair.servicePort, ["INCR", "n"]), "\(expected)", mode) }
            let primary = pair.primary.output
            XCTAssertEqual(primary.components(separatedBy: "the machine is protected").count - 1, 1, "\(mode): protected by a backup without a seed:\n\(primary)")
            XCTAssertFalse(primary.contains("acknowledged nothing for"), "\(mode): the replies came out by the acknowledgement timeout:\n\(primary)")

            try pair.restartBackup()
            try pair.primary.waitFor("the machine is protected", times: 2)
            try pair.killPrimaryAndWaitForTakeover(probe: pingProbe)
            XCTAssertEqual(try Harness.redisCLI(pair.servicePort, ["INCR", "n"]), "22", mode)
        }
    }

    /// A guest of 256 MiB is seeded at the default heartbeat timeout (100 ms): its pre-copy goes
    /// in parts of a few MiB, between which heartbeats pass (as one frame, the primary's event loop
    /// encoded it for longer than the timeout, and the backup gave the primary up mid-seed, again
    /// and again). Every value reads back after a failover.
    func testAGuestOfHundredsOfMiBIsSeededAtTheDefaultHeartbeatTimeout() throws {
        let values = 256
        let pair = try ProtectedPair("kv", mode: "llm", primaryOptions: ["--memory-limit", "1GiB"])
        defer { pair.stop() }
        let client = try LineClient(port: pair.servicePort)
        let value = String((0..<(1 << 20)).map { _ in "abcdefghijklmnopqrstuvwxyz0123456789".randomElement()! })
        for index in 0..<values {
            let key = "fill:\(index)"
            let stored = "\(index):" + value.dropFirst("\(index):".count)
            try client.send("*3\r\n$3\r\nSET\r\n$\(key.utf8.count)\r\n\(key)\r\n$\(stored.utf8.count)\r\n\(stored)\r\n")
            XCTAssertEqual(try client.readLine(), "+OK")
        }
        // The fill may have cost the backup its place already (an ack timeout) and had it
        // seeded again: protected once more than now is the new backup's seed.
        let protections = pair.primary.output.components(separatedBy: "the machine is protected").count - 1
        // Given up, it was told so: it never claimed the machine of a primary that lives (told by
        // a close alone, it did, and when it won the primary stood down and reset the client).
        XCTAssertFalse(pair.backup.output.contains("claiming the next generation"), "the backup took the primary for dead:\n\(pair.backup.output)")
        try pair.restartBackup()
        try pair.primary.waitFor("the machine is protected", times: protections + 1, seconds: 120)
        let primary = pair.primary.output
        XCTAssertTrue(primary.contains("copied=128 of"), "the seed of a large memory reports its progress:\n\(primary)")
        XCTAssertFalse(pair.backup.output.contains("silent"), "the backup gave the primary up while seeded:\n\(pair.backup.output)")
        try pair.killPrimaryAndWaitForTakeover(probe: pingProbe)
        let after = try LineClient(port: pair.servicePort)
        for index in [0, values / 2, values - 1] {
            try after.send("*2\r\n$3\r\nGET\r\n$\("fill:\(index)".utf8.count)\r\nfill:\(index)\r\n")
            XCTAssertEqual(try after.readLine(), "$\(value.utf8.count)")
            XCTAssertEqual(try after.readLine(), "\(index):" + value.dropFirst("\(index):".count), "value \(index) after the failover")
        }
    }

    /// A backup that heartbeats but acknowledges nothing would hold every reply forever; once
    /// `--ack-timeout` has passed the primary counts it lost and answers (in both modes that
    /// wait on different acknowledgements: checkpoints in remus, the log in llm).
    func testABackupThatStopsAcknowledgingIsGivenUpAfterTheAckTimeout() throws {
        for mode in ["remus", "llm"] {
            let pair = try ProtectedPair("kv", mode: mode, primaryOptions: ["--ack-timeout", "300ms"], backupOptions: ["--inject-stall", "after-seed"],
                // It acknowledges nothing, so the machine is never protected: output waits for it.
                ready: "holding output for the backup")
            defer { pair.stop() }
            try pair.backup.waitFor("fault injection: seeded; acknowledging nothing more")
            // redis-cli gives up after the harness's 30 s: a reply held for the backup fails here.
            XCTAssertEqual(try Harness.redisCLI(pair.servicePort, ["INCR", "n"]), "1", mode)
            try pair.primary.waitFor("the backup acknowledged nothing for")
            try pair.primary.waitFor("generation won: serving alone", times: 2)
            XCTAssertTrue(pair.backup.isRunning, "\(mode): the backup is alive, only stuck")
        }
    }

    /// A promoted backup protects the machine as its primary did: the primary's flags travel
    /// with the module. Here its `--ack-timeout`: a standby that stops acknowledging after its seed
    /// is given up by the promoted backup after the primary's 300 ms, not the default 500.
    func testAPromotedBackupProtectsWithItsPrimarysSettings() throws {
        let pair = try ProtectedPair("kv", mode: "llm", primaryOptions: ["--ack-timeout", "300ms"])
        defer { pair.stop() }
        XCTAssertEqual(try Harness.redisCLI(pair.servicePort, ["INCR", "n"]), "1")
        try pair.killPrimaryAndWaitForTakeover(probe: pingProbe)
        let standby = try ProtectedPair.startBackup(
            replicationPort: Harness.freePort(), servicePort: Harness.freePort(),
            options: try pair.security.flags() + pair.coordinationFlags + ["--inject-stall", "after-seed"])
        defer { standby.kill() }
        try standby.waitFor("fault injection: seeded; acknowledging nothing more")
        XCTAssertEqual(try Harness.redisCLI(pair.servicePort, ["INCR", "n"]), "2")
        try pair.backup.waitFor("(--ack-timeout 300 ms)")
    }

    /// A backup paused past the heartbeat timeout (SIGSTOP) is given up: the primary answers
    /// again, and tells it so; resumed, the backup reads that it was given up and does not take
    /// over a live primary, which seeds it again; a later failover keeps every acknowledged INCR.
    func testAPausedBackupIsGivenUpAndOnResumingDoesNotTakeOver() throws {
        for security in [ProtectedPair.Security.tls, .insecure] { try pausedBackup(security) }
    }

    private func pausedBackup(_ security: ProtectedPair.Security) throws {
        let pair = try ProtectedPair("kv", mode: "llm", security: security)
        defer { pair.stop() }
        let incrementer = try ClientProcess("redis-cli", ["-p", "\(pair.servicePort)", "-r", "1000000", "-i", "0", "INCR", "counter"])
        try Harness.waitUntil("an INCR acknowledged") { incrementer.output.hasPrefix("1\n") }
        kill(pair.backup.pid, SIGSTOP)
        try pair.primary.waitFor("generation won: serving alone", times: 2)
        let during = try XCTUnwrap(Int(try Harness.redisCLI(pair.servicePort, "INCR", "during-the-pause")), "no answer while the backup is paused")
        XCTAssertEqual(during, 1)
        usleep(200_000)
        kill(pair.backup.pid, SIGCONT)
        try pair.backup.waitFor("given up: the peer has been silent")
        try pair.primary.waitFor("the machine is protected", times: 2)
        XCTAssertFalse(pair.backup.output.contains("; taking over"), pair.backup.output)
        try pair.killPrimaryAndWaitForTakeover(probe: pingProbe)
        incrementer.stop()
        let increments = incrementer.output.split(separator: "\n").prefix { Int($0) != nil }.count
        let counter = try XCTUnwrap(Int(try Harness.redisCLI(pair.servicePort, "GET", "counter")), "the counter is not a number")
        XCTAssertTrue(counter == increments || counter == increments + 1, "counter \(counter) after \(increments) acknowledged INCRs")
        XCTAssertEqual(try Harness.redisCLI(pair.servicePort, "GET", "during-the-pause"), "1")
    }

    // MARK: Bad peers

    /// Mutual TLS: a peer that does not speak TLS, and one whose certificate another authority
    /// signed, are refused during the handshake and logged with their address, before a frame is
    /// parsed; the real primary stays protected, and a later failover keeps everything.
    func testPeersWithoutACertificateOfTheAuthorityAreRefusedDuringTheTLSHandshake() throws {
        let backupMetrics = Harness.freePort()
        let pair = try ProtectedPair("kv", mode: "llm", backupOptions: ["--metrics", "127.0.0.1:\(backupMetrics)"])
        defer { pair.stop() }
        XCTAssertEqual(try Harness.redisCLI(pair.servicePort, "SET", "k1", "v1"), "OK")

        let plain = try WirePeer(port: pair.replicationPort)
        try? plain.send(.hello(.init(mode: .llm, moduleHash: String(repeating: "0", count: 64), moduleBytes: 1024, memoryLimitBytes: 1 << 24)))
        XCTAssertNil(try? plain.receive() ?? nil, "a peer without TLS got a frame back")
        try pair.backup.waitFor("refusing a replication peer: TLS handshake failed")

        let certificates = try Harness.certificates()
        // Its exit status depends on when TLS 1.3 delivers the alert; the backup's log is what counts.
        _ = try Harness.run(
            "openssl",
            [
                "s_client", "-connect", "127.0.0.1:\(pair.replicationPort)", "-cert", certificates.certificate("stranger"), "-key",
                certificates.key("stranger"), "-CAfile", certificates.authority, "-tls1_3",
            ], timeoutSeconds: 30)
        try pair.backup.waitFor("refusing a replication peer: TLS handshake failed", times: 2)
        let backup = pair.backup.output
        XCTAssertTrue(backup.contains("peer=[IPv4]127.0.0.1"), "the refusal names the peer:\n\(backup)")
        XCTAssertEqual(backup.components(separatedBy: "primary connected").count - 1, 1, "only the real primary said hello:\n\(backup)")
        XCTAssertFalse(backup.contains("fails its checksum") || backup.contains("refusing a primary"), "a frame was parsed:\n\(backup)")

        XCTAssertEqual(try MetricsScrape(port: backupMetrics).value("understudy_protected"), 1)
        XCTAssertFalse(pair.primary.output.contains("backup lost"), pair.primary.output)
        XCTAssertEqual(try Harness.redisCLI(pair.servicePort, "SET", "k2", "v2"), "OK")
        try pair.killPrimaryAndWaitForTakeover(probe: pingProbe)
        XCTAssertEqual(try Harness.redisCLI(pair.servicePort, "MGET", "k1", "k2"), "v1\nv2")
    }

    /// A peer not yet welcomed may send a hello and nothing larger: a header declaring a 1 GiB
    /// frame is refused on the header, before a byte of it is kept; a crowd of idle connections
    /// is capped and timed out. Meanwhile the real primary stays protected and nobody takes over.
    func testAFloodAndACrowdAreRefusedWhileTheMachineStaysProtected() throws {
        let backupMetrics = Harness.freePort()
        let pair = try ProtectedPair("kv", mode: "llm", security: .insecure, backupOptions: ["--metrics", "127.0.0.1:\(backupMetrics)"])
        defer { pair.stop() }
        XCTAssertEqual(try Harness.redisCLI(pair.servicePort, "SET", "k1", "v1"), "OK")
        let residentBefore = try residentBytes(pair.backup.pid)

        let flood = try WirePeer(port: pair.replicationPort)
        try flood.sendHeader(declaringPayload: 1 << 30)
        let chunk = [UInt8](repeating: 0x5a, count: 1 << 20)
        var sent = 0
        while sent < 256, (try? flood.send(chunk)) != nil { sent += 1 }
        XCTAssertLessThan(sent, 256, "the backup kept reading a frame it should have refused on its header")
        try pair.backup.waitFor("exceeds the limit of 4096")

        let crowd = try (0..<40).map { _ in try WirePeer(port: pair.replicationPort) }
        try pair.backup.waitFor("refusing a replication connection: too many open")
        crowd.forEach { $0.close() }

        XCTAssertLessThan(try residentBytes(pair.backup.pid) - residentBefore, 64 << 20, "the backup buffered the flood")
        XCTAssertEqual(try MetricsScrape(port: backupMetrics).value("understudy_protected"), 1)
        XCTAssertFalse(pair.primary.output.contains("backup lost"), pair.primary.output)
        XCTAssertFalse(pair.backup.output.contains("taking over"), pair.backup.output)
        XCTAssertEqual(try Harness.redisCLI(pair.servicePort, "SET", "k2", "v2"), "OK")
        try pair.killPrimaryAndWaitForTakeover(probe: pingProbe)
        XCTAssertEqual(try Harness.redisCLI(pair.servicePort, "MGET", "k1", "k2"), "v1\nv2")
    }

    private func residentBytes(_ pid: Int32) throws -> Int {
        let status = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
        let line = try XCTUnwrap(status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") }, status)
        return try XCTUnwrap(Int(line.split(separator: " ").dropFirst().first ?? ""), String(line)) * 1024
    }

    func testGarbageAndSecondPrimariesAreRefusedWhileTheMachineStaysProtected() throws {
        let pair = try ProtectedPair("kv", mode: "llm", security: .insecure)
        defer { pair.stop() }
        XCTAssertEqual(try Harness.redisCLI(pair.servicePort, "SET", "k1", "v1"), "OK")

        let garbage = try WirePeer(port: pair.replicationPort)
        try garbage.send(Array("GET / HTTP/1.1\r\nHost: backup\r\n\r\n0123456789abcdef".utf8))
        XCTAssertNil(try garbage.receive(), "garbage got an answer")
        try pair.backup.waitFor("fails its checksum")

        let oldClient = try WirePeer(port: pair.replicationPort)
        try oldClient.send(.hello(.init(protocolVersion: 99, mode: .llm, moduleHash: String(repeating: "0", count: 64), moduleBytes: 1024, memoryLimitBytes: 1 << 24)))
        guard case .refusal(let versionReason) = try oldClient.receive() else { return XCTFail("no refusal for version 99") }
        XCTAssertTrue(versionReason.contains("protocol version 99"), versionReason)

        let rival = try WirePeer(port: pair.replicationPort)
        try rival.send(.hello(.init(mode: .llm, moduleHash: String(repeating: "0", count: 64), moduleBytes: 1024, memoryLimitBytes: 1 << 24)))
        guard case .refusal(let rivalReason) = try rival.receive() else { return XCTFail("a second primary was not refused") }
        XCTAssertTrue(rivalReason.contains("already protects a primary"), rivalReason)

        XCTAssertEqual(try Harness.redisCLI(pair.servicePort, "SET", "k2", "v2"), "OK")
        try pair.killPrimaryAndWaitForTakeover(probe: pingProbe)
        XCTAssertEqual(try Harness.redisCLI(pair.servicePort, "MGET", "k1", "k2"), "v1\nv2")
    }

    func testWrongModuleAndCutCheckpointAreRefusedAndTheBackupStillProtectsARealPrimary() throws {
        let module = try Harness.guest("kv")
        // A real checkpoint (recorded by `run --record`) and the module as that run prepared it.
        let (checkpoint, realHash) = try recordedCheckpoint()
        let moduleBytes = try preparedModule(hash: realHash)
        let servicePort = Harness.freePort()
        let replicationPort = Harness.freePort()
        let backup = try ProtectedPair.startBackup(replicationPort: replicationPort, servicePort: servicePort, options: ["--insecure-replication"])
        defer { backup.kill() }
        let configuration = { (hash: String, ackTimeoutNanos: Int) -> [UInt8] in
            let manifest = #"{"version":1,"moduleHash":"\#(hash)","arguments":["kv.wasm"],"environment":[],"listenerCount":1}"#
            let durations = #""epochNanos":25000000,"checkpointIntervalNanos":50000000,"syncIntervalNanos":100000000,"#
            let timeouts = #""ackTimeoutNanos":\#(ackTimeoutNanos),"fenceTimeoutNanos":5000000000"#
            let protection: String = "{" + durations + #""logBytesPerCheckpoint":8388608,"blockSize":64,"verifySyncs":false,"# + timeouts + "}"
            return Array(#"{"manifest":"#.utf8) + Array(manifest.utf8) + Array(#","protection":"#.utf8) + Array(protection.utf8) + [UInt8(ascii: "}")]
        }

        // The hello names one module, the module sent is another.
        let liar = try WirePeer(port: replicationPort)
        try liar.send(.hello(.init(mode: .llm, moduleHash: String(repeating: "a", count: 64), moduleBytes: UInt64(moduleBytes.count), memoryLimitBytes: 1 << 30)))
        XCTAssertEqual(try liar.receive(), .welcome)
        try liar.send(.module(bytes: moduleBytes, configuration: configuration(String(repeating: "a", count: 64), 500_000_000)))
        let answer = try liar.receive()
        guard case .refusal(let moduleReason) = answer else { return XCTFail("a wrong module was not refused: \(String(describing: answer))\n\(backup.output)") }
        XCTAssertTrue(moduleReason.contains("SHA-256 is \(realHash)"), moduleReason)
        try backup.waitFor("refusing the primary's session")

        // A module of another size than the hello declared.
        let braggart = try WirePeer(port: replicationPort)
        try braggart.send(.hello(.init(mode: .llm, moduleHash: String(realHash), moduleBytes: UInt64(moduleBytes.count + 1), memoryLimitBytes: 1 << 30)))
        XCTAssertEqual(try braggart.receive(), .welcome)
        try braggart.send(.module(bytes: moduleBytes, configuration: configuration(String(realHash), 500_000_000)))
        guard case .refusal(let sizeReason) = try braggart.receive() else { return XCTFail("a module of the wrong size was not refused") }
        XCTAssertEqual(sizeReason, "the module is \(moduleBytes.count) bytes; the hello declared \(moduleBytes.count + 1)")

        // Protection the backup could not keep up once promoted: refused with the module.
        let careless = try WirePeer(port: replicationPort)
        try careless.send(.hello(.init(mode: .llm, moduleHash: String(realHash), moduleBytes: UInt64(moduleBytes.count), memoryLimitBytes: 1 << 30)))
        XCTAssertEqual(try careless.receive(), .welcome)
        try careless.send(.module(bytes: moduleBytes, configuration: configuration(String(realHash), 0)))
        guard case .refusal(let settingsReason) = try careless.receive() else { return XCTFail("an ack timeout of 0 was not refused") }
        XCTAssertEqual(settingsReason, "the primary's protection settings are refused: the ack timeout of 0 ms is not between 0 and an hour")

        // Welcomed for a 16 MiB machine, it declares a frame no such machine can need: refused on
        // the header (16 MiB + a quarter + 16 MiB of slack is the bound), nothing of it kept.
        let boaster = try WirePeer(port: replicationPort)
        try boaster.send(.hello(.init(mode: .llm, moduleHash: String(realHash), moduleBytes: UInt64(moduleBytes.count), memoryLimitBytes: 16 << 20)))
        XCTAssertEqual(try boaster.receive(), .welcome)
        try boaster.sendHeader(declaringPayload: 1 << 30)
        XCTAssertNil(try boaster.receive(), "the backup kept a connection that declared a 1 GiB frame")
        try backup.waitFor("a frame of 1073741824 bytes exceeds the limit of \(36 << 20)")

        // The right module, then a checkpoint cut short.
        let cutter = try WirePeer(port: replicationPort)
        try cutter.send(.hello(.init(mode: .llm, moduleHash: String(realHash), moduleBytes: UInt64(moduleBytes.count), memoryLimitBytes: 1 << 30)))
        XCTAssertEqual(try cutter.receive(), .welcome)
        try cutter.send(.module(bytes: moduleBytes, configuration: configuration(String(realHash), 500_000_000)))
        try cutter.send(.checkpoint(epoch: 1, bytes: Array(checkpoint.prefix(checkpoint.count / 2))))
        guard case .refusal(let cutReason) = try cutter.receive() else { return XCTFail("a cut checkpoint was not refused") }
        XCTAssertTrue(cutReason.contains("checkpoint 1 refused"), cutReason)
        cutter.close()
        usleep(200_000)
        XCTAssertTrue(backup.isRunning, "the backup died:\n\(backup.output)")
        XCTAssertTrue(backup.output.contains("not taking over"), backup.output)
        XCTAssertFalse(pingProbe(servicePort), "the backup took over from a peer it refused")

        // A real primary is still welcome, and protected.
        let primary = try UnderstudyProcess(
            "primary",
            [
                "primary", module, "--listen", "127.0.0.1:\(servicePort)", "--backup", "127.0.0.1:\(replicationPort)", "--mode", "llm",
                "--insecure-replication",
            ])
        defer { primary.kill() }
        try primary.waitFor("the machine is protected")
        XCTAssertEqual(try Harness.redisCLI(servicePort, "SET", "survivor", "yes"), "OK")
        primary.kill()
        try Harness.waitUntil("the backup serving after the primary's death:\n\(backup.output)") { pingProbe(servicePort) }
        XCTAssertEqual(try Harness.redisCLI(servicePort, "GET", "survivor"), "yes")
    }

    /// A backup that could not take the service over (another number of --listen addresses)
    /// says so when the primary connects, not at the failover; the primary serves on unprotected.
    func testABackupWithTheWrongNumberOfServiceAddressesRefusesAtOnce() throws {
        let servicePort = Harness.freePort()
        let replicationPort = Harness.freePort()
        let backup = try UnderstudyProcess(
            "backup",
            [
                "backup", "--replication", "127.0.0.1:\(replicationPort)", "--listen", "127.0.0.1:\(servicePort)", "--listen",
                "127.0.0.1:\(Harness.freePort())",
            ] + (try Harness.certificates().flags))
        defer { backup.kill() }
        try backup.waitFor("waiting for a primary")
        let primary = try UnderstudyProcess(
            "primary",
            [
                "primary", try Harness.guest("kv"), "--listen", "127.0.0.1:\(servicePort)", "--backup", "127.0.0.1:\(replicationPort)",
                "--mode", "remus",
            ] + (try Harness.certificates().flags))
        defer { primary.kill() }
        try primary.waitFor("this backup's --listen gives 2")
        XCTAssertEqual(try Harness.redisCLI(servicePort, "PING"), "PONG", "the primary serves on, unprotected")
        XCTAssertFalse(primary.output.contains("the machine is protected"))
    }

    /// A primary whose guest exits says goodbye: its backup does not take the exit for a death.
    func testAGuestThatExitsEndsProtectionWithoutATakeover() throws {
        let replicationPort = Harness.freePort()
        let backup = try UnderstudyProcess("backup", ["backup", "--replication", "127.0.0.1:\(replicationPort)"] + (try Harness.certificates().flags))
        defer { backup.kill() }
        try backup.waitFor("waiting for a primary")
        let primary = try UnderstudyProcess(
            "primary",
            [
                "primary", try Harness.guest("pagetouch"), "--backup", "127.0.0.1:\(replicationPort)", "--mode", "llm",
            ] + (try Harness.certificates().flags) + ["--", "16", "100", "600000"])
        defer { primary.kill() }
        try primary.waitFor("the machine is protected")
        XCTAssertEqual(try primary.child.waitForExit(seconds: 120), 0, primary.output)
        // (A backup slow to apply a checkpoint on a busy machine may have been given up and
        // seeded again before: the session that counts is the last.)
        try backup.waitFor("the primary is shutting down")
        try backup.waitFor("not taking over")
        XCTAssertFalse(backup.output.contains("is gone; taking over"), backup.output)
        XCTAssertTrue(backup.isRunning, "the backup should wait for its primary to return:\n\(backup.output)")
    }

    /// The module the harness's cache holds for `hash` (an entry is the module and its digest).
    private func preparedModule(hash: String) throws -> [UInt8] {
        let cache = URL(fileURLWithPath: Harness.cache)
        let digests = try FileManager.default.contentsOfDirectory(atPath: cache.path).filter { $0.hasSuffix(".wasm.sha256") }
        let entry = try XCTUnwrap(
            digests.first { (try? String(contentsOf: cache.appendingPathComponent($0), encoding: .utf8)) == hash },
            "no prepared module \(hash) in \(cache.path)")
        return Array(try Data(contentsOf: cache.appendingPathComponent(String(entry.dropLast(".sha256".count)))))
    }

    /// The bytes of checkpoint 1 of a short recording of kv, and the hash of the module it ran.
    private func recordedCheckpoint() throws -> ([UInt8], String) {
        let directory = Harness.scratch("understudy-cut")
        let served = try ServedGuest("kv", options: ["--record", directory.path, "--checkpoint-every", "50ms"])
        let file = directory.appendingPathComponent("checkpoint-000001.ckpt")
        try Harness.waitUntil("checkpoint 2 of kv's recording") {
            FileManager.default.fileExists(atPath: directory.appendingPathComponent("checkpoint-000002.ckpt").path)
        }
        served.stop()
        let manifest = try JSONSerialization.jsonObject(with: Data(contentsOf: directory.appendingPathComponent("manifest.json")))
        let hash = try XCTUnwrap((manifest as? [String: Any])?["moduleHash"] as? String, "manifest.json names no moduleHash")
        return (Array(try Data(contentsOf: file)), hash)
    }
}

/// A replication peer made by hand: frames (or garbage) over a raw TCP socket. Once it has said
/// hello it beats every 10 ms, as a primary does, so the backup does not give it up for silence.
final class WirePeer: @unchecked Sendable {
    private let fd: Int32
    private var sequence: UInt64 = 0
    private var decoder = WireDecoder()
    private let lock = NSLock()
    private var beating: Thread?

    init(port: UInt16) throws {
        fd = try Harness.connect(port: port, timeoutSeconds: 30)
    }

    deinit { close() }

    private var closed = false
    func close() {
        lock.withLock {
            if !closed { Glibc.close(fd) }
            closed = true
        }
        beating?.cancel()
    }

    func send(_ message: WireMessage) throws {
        try lock.withLock {
            guard !closed else { throw POSIXError(.EBADF) }
            try send(WireCodec.encode(message, sequence: sequence))
            sequence += 1
        }
        if case .hello = message, beating == nil {
            let thread = Thread { [weak self] in
                while !Thread.current.isCancelled, (try? self?.send(.heartbeat)) != nil { usleep(10_000) }
            }
            beating = thread
            thread.start()
        }
    }

    /// A frame header, next in sequence and with a good checksum, declaring a payload of
    /// `length` bytes, none of which follow.
    func sendHeader(declaringPayload length: UInt32) throws {
        try lock.withLock {
            // sequence u64 | generation u64 | type u8 | length u32, then the header's CRC.
            var header = Array(WireCodec.encode(.heartbeat, sequence: sequence).prefix(21))
            withUnsafeBytes(of: length.littleEndian) { header.replaceSubrange(17..<21, with: $0) }
            withUnsafeBytes(of: CRC32C.checksum(header).littleEndian) { header.append(contentsOf: $0) }
            try send(header)
            sequence += 1
        }
    }

    func send(_ bytes: [UInt8]) throws {
        var sent = 0
        while sent < bytes.count {
            let result = bytes[sent...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard result > 0 else { throw POSIXError(.EPIPE) }
            sent += result
        }
    }

    /// The next message that is not a heartbeat; nil once the backup closes the connection.
    func receive() throws -> WireMessage? {
        while true {
            while let message = try decoder.next() {
                if message != .heartbeat { return message }
            }
            var chunk = [UInt8](repeating: 0, count: 65_536)
            let got = recv(fd, &chunk, chunk.count, 0)
            if got == 0 { return nil }
            guard got > 0 else { throw POSIXError(.ETIMEDOUT) }
            decoder.append(chunk[..<got])
        }
    }
}
