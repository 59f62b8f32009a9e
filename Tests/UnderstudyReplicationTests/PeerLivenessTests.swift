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
        for now in stride(from: 105 * ms, to: 150 * ms, by: Int(10 * ms)) {
            XCTAssertNotEqual(liveness.verdict(at: now), .peerSilent(forNanos: now - 100 * ms), "at \(now / ms) ms")
        }
        XCTAssertEqual(liveness.verdict(at: 150 * ms), .peerSilent(forNanos: 50 * ms))
    }

    /// Checked every interval, then not at all for 160 ms (this process was stopped): the peer's
    /// silence over the gap is not held against it. It gets a fresh timeout, and is given up
    /// only if it stays silent through that.
    func testOwnPauseIsNotThePeersSilence() {
        var liveness = PeerLiveness(intervalNanos: 10 * ms, timeoutNanos: 50 * ms, now: 0)
        for now in stride(from: 10 * ms, through: 40 * ms, by: Int(10 * ms)) {
            liveness.sent(at: now)
            XCTAssertEqual(liveness.verdict(at: now), .alive)
        }
        XCTAssertNotEqual(liveness.verdict(at: 200 * ms), .peerSilent(forNanos: 200 * ms), "judged over its own pause")
        for now in stride(from: 210 * ms, to: 250 * ms, by: Int(10 * ms)) {
            liveness.sent(at: now)
            XCTAssertEqual(liveness.verdict(at: now), .alive, "at \(now / ms) ms")
        }
        XCTAssertEqual(liveness.verdict(at: 250 * ms), .peerSilent(forNanos: 50 * ms), "a peer still silent after it is given up")
    }

    /// A check 45 ms late (the event loop held up for 35 ms beyond its interval): those 35 ms
    /// are not the peer's silence; it is given up only once it has been silent for the timeout
    /// of time this side could read.
    func testAHeldUpLoopDoesNotCountAgainstThePeer() {
        var liveness = PeerLiveness(intervalNanos: 10 * ms, timeoutNanos: 50 * ms, now: 0)
        for now in [10 * ms, 20 * ms] {
            liveness.sent(at: now)
            XCTAssertEqual(liveness.verdict(at: now), .alive)
        }
        liveness.sent(at: 65 * ms)
        XCTAssertEqual(liveness.verdict(at: 65 * ms), .alive, "judged over the time it could not read")
        liveness.sent(at: 75 * ms)
        XCTAssertEqual(liveness.verdict(at: 75 * ms), .alive)
        XCTAssertEqual(liveness.verdict(at: 85 * ms), .peerSilent(forNanos: 50 * ms))
    }
}
