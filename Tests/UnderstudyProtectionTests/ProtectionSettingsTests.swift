import Foundation
import UnderstudyReplication
import XCTest

@testable import UnderstudyProtection

/// The primary's protection flags as they travel to its backup with the module.
final class ProtectionSettingsTests: XCTestCase {
    func testSettingsTravelExactlyAndDurationsAsNanoseconds() throws {
        var settings = ProtectionSettings()
        settings.epoch = .milliseconds(40)
        settings.checkpointInterval = .microseconds(12_500)
        settings.logBytesPerCheckpoint = 1 << 20
        settings.syncInterval = .seconds(2)
        settings.blockSize = 256
        settings.verifySyncs = true
        settings.ackTimeout = .milliseconds(300)
        settings.fenceTimeout = .seconds(9)
        let json = try JSONEncoder().encode(settings)
        XCTAssertEqual(try JSONDecoder().decode(ProtectionSettings.self, from: json), settings)
        let fields = try XCTUnwrap(try JSONSerialization.jsonObject(with: json) as? [String: Any])
        XCTAssertEqual(fields["checkpointIntervalNanos"] as? Int, 12_500_000)
        XCTAssertEqual(fields["fenceTimeoutNanos"] as? Int, 9_000_000_000)
        XCTAssertNil(settings.refusal)
    }

    func testSettingsNoPrimaryCouldRunAreRefused() {
        var zero = ProtectionSettings()
        zero.epoch = .zero
        XCTAssertEqual(zero.refusal, "the epoch of 0 ms is not between 0 and an hour")
        var long = ProtectionSettings()
        long.fenceTimeout = .seconds(3601)
        XCTAssertEqual(long.refusal, "the fence timeout of 3601000 ms is not between 0 and an hour")
        var odd = ProtectionSettings()
        odd.blockSize = 100
        XCTAssertEqual(odd.refusal, "block size 100")
        var none = ProtectionSettings()
        none.logBytesPerCheckpoint = 0
        XCTAssertEqual(none.refusal, "a checkpoint every 0 bytes of log")
    }
}
