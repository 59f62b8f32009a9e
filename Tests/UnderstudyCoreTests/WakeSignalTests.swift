import Foundation
import XCTest

@testable import UnderstudyCore

/// A wake signal writes its pipe only for a waiter that is blocked (or one that never says it
/// runs), and a raise that races a wait is never lost.
final class WakeSignalTests: XCTestCase {
    private func readable(_ signal: WakeSignal) -> Bool {
        var descriptor = pollfd(fd: signal.descriptor, events: Int16(POLLIN), revents: 0)
        return poll(&descriptor, 1, 0) == 1
    }

    func testAWaiterThatNeverSaysItRunsIsWrittenToAtEveryRaise() {
        let signal = WakeSignal()
        signal.raise()
        XCTAssertTrue(readable(signal))
        XCTAssertTrue(signal.consume())
        XCTAssertFalse(readable(signal))
    }

    func testARaiseWhileTheWaiterRunsOnlySetsTheFlag() {
        let signal = WakeSignal()
        signal.doneWaiting()
        signal.raise()
        XCTAssertFalse(readable(signal), "nobody is blocked on the pipe")
        XCTAssertTrue(signal.isRaised)
        XCTAssertFalse(signal.willWait(), "raised already: the waiter must not block")
        signal.doneWaiting()
        XCTAssertTrue(signal.consume())
    }

    func testARaiseWhileTheWaiterIsBlockedWakesIt() {
        let signal = WakeSignal()
        signal.doneWaiting()
        XCTAssertTrue(signal.willWait())
        let woken = expectation(description: "the blocked waiter woke")
        DispatchQueue.global().async {
            var descriptor = pollfd(fd: signal.descriptor, events: Int16(POLLIN), revents: 0)
            XCTAssertEqual(poll(&descriptor, 1, 5_000), 1)
            woken.fulfill()
        }
        usleep(20_000)
        signal.raise()
        wait(for: [woken], timeout: 5)
        signal.doneWaiting()
        XCTAssertTrue(signal.consume())
    }

    /// Raises from another thread against a waiter that blocks whenever `willWait` lets it: every
    /// raise is seen, none waits out the timeout.
    func testRacingRaisesAreNeverLost() {
        let signal = WakeSignal()
        let rounds = 2_000
        let taken = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            for _ in 0..<rounds {
                signal.raise()
                taken.wait()
            }
        }
        for round in 0..<rounds {
            while !signal.consume() {
                if signal.willWait() {
                    var descriptor = pollfd(fd: signal.descriptor, events: Int16(POLLIN), revents: 0)
                    // The raiser raises at once: a wait that times out with the signal raised was
                    // not woken by it.
                    if poll(&descriptor, 1, 2_000) == 0 && signal.isRaised {
                        taken.signal()
                        return XCTFail("round \(round): raised while the waiter was blocked, and the pipe was not written")
                    }
                }
                signal.doneWaiting()
            }
            taken.signal()
        }
    }
}
