import UnderstudyCore
import XCTest

@testable import UnderstudyMachine
@testable import UnderstudyReplication

/// The block encodings on real guest memory: kv's pages after 300 SETs, encoded against the same
/// pages before them, in 4 KiB pages and in 256-byte blocks; every block must come back exactly,
/// and the whole must travel in less than it is.
final class GuestPageEncodingTests: XCTestCase {
    private func command(_ words: String...) -> String {
        "*\(words.count)\r\n" + words.map { "$\($0.utf8.count)\r\n\($0)\r\n" }.joined()
    }

    /// kv's memory after `writes`, captured at the end of the script.
    private func memory(after writes: String) throws -> [UInt8] {
        let world = ScriptedWorld(incoming: [Array(writes.utf8)], interruptEvery: 2, suspension: SuspensionRequest())
        let machine = try Machine(
            prepared: try Fixtures.guest("kv"), world: world, suspension: world.suspension,
            configuration: MachineConfiguration(arguments: ["kv"], listenerCount: 1))
        var saved: MachineState?
        machine.onSuspended = { machine in
            guard world.finished else { return }
            saved = try machine.captureState()
            throw ScriptedWorld.Finished()
        }
        XCTAssertThrowsError(try machine.run())
        return try XCTUnwrap(saved).memory
    }

    func testRealKVPagesRoundTripInEveryBlockSizeAndShrink() throws {
        let first = (0..<100).map { command("SET", "key:\($0)", "value-\($0)") }.joined()
        let more = first + (100..<300).map { command("SET", "key:\($0)", String(repeating: "v", count: $0 % 50)) }.joined()
        let before = try memory(after: first)
        let after = try memory(after: more)
        XCTAssertEqual(before.count, after.count)
        for blockSize in [256, 4096] {
            var sent = 0
            var changed = 0
            var encodings: [BlockEncoding: Int] = [:]
            for start in stride(from: 0, to: after.count, by: blockSize) {
                let range = start..<(start + blockSize)
                guard after[range] != before[range] else { continue }
                changed += blockSize
                let block = Array(after[range])
                let base = Array(before[range])
                let (encoding, bytes) = block.withUnsafeBytes { block in base.withUnsafeBytes { BlockCodec.encode(block, previous: $0) } }
                encodings[encoding, default: 0] += 1
                sent += bytes.count
                let decoded = try base.withUnsafeBytes { base throws(BlockEncodingError) in
                    try BlockCodec.decode(encoding, bytes, count: blockSize, previous: base)
                }
                XCTAssertEqual(decoded, block, "block at \(start) (\(encoding)) does not round-trip")
            }
            XCTAssertGreaterThan(changed, 0)
            XCTAssertLessThan(sent, changed / 2, "\(blockSize)-byte blocks: \(sent) bytes sent for \(changed) changed: \(encodings)")
            print("kv pages, \(blockSize)-byte blocks: \(changed) bytes changed, \(sent) sent; \(encodings)")
        }
    }
}
