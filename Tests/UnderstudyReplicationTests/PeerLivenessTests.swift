import XCTest

@testable import UnderstudyReplication

final class PeerLivenessTests: XCTestCase {
    private let ms: UInt64 = 1_000_000

    func testHeartbeatsGoOutOnlyWhenNothingElseWasSent() {
        var liveness = PeerLiveness(intervalNanos: 10 * ms, timeoutNanos: 50 * ms, now: 0)
        XCTAssertEqual(liveness.verdict(at: 5 * ms), .alive)
        XCTAssertEqual(liveness.verdict(at: 10 * ms), .sendHeartbeat)
        liveness.sent(at: 9 * ms)  // a log batch went out: no heartbeat needed yet
        liveness.heard(at: 9 * ms)
        XCTAssertEqual(liveness.verdict(at: 12 * ms), .alive)
        XCTAssertEqual(liveness.verdict(at: 19 * ms), .sendHeartbeat)
    }

    func testAPeerSilentForTheTimeoutIsGivenUpWhateverWasSent() {
        var liveness = PeerLiveness(intervalNanos: 10 * ms, timeoutNanos: 50 * ms, now: 0)
        liveness.heard(at: 20 * ms)
        for now in stride(from: 20 * ms, to: 70 * ms, by: Int(5 * ms)) {
            liveness.sent(at: now)
            XCTAssertEqual(liveness.verdict(at: now), .alive, "at \(now / ms) ms")
        }
        XCTAssertEqual(liveness.verdict(at: 70 * ms), .peerSilent(forNanos: 50 * ms))
        liveness.heard(at: 71 * ms)
        XCTAssertEqual(liveness.verdict(at: 72 * ms), .alive, "a peer heard again is alive")
    }

    func testTimesGoingBackwardsDoNotUndoWhatWasHeard() {
        var liveness = PeerLiveness(intervalNanos: 10 * ms, timeoutNanos: 50 * ms, now: 100 * ms)
        liveness.heard(at: 90 * ms)
        XCTAssertEqual(liveness.verdict(at: 95 * ms), .alive)
        XCTAssertEqual(liveness.verdict(at: 150 * ms), .peerSilent(forNanos: 50 * ms))
    }
}
