import NIOCore

extension Channel {
    /// Ends a replication connection from this side with `message` (a refusal: why) as the last
    /// thing the peer reads. Closing the socket once the message is written is not enough: the
    /// peer's bytes arriving after the close (a heartbeat, an acknowledgement) make this kernel
    /// answer with a reset, and a reset throws away whatever the peer had not read yet, the reason
    /// with it. A busy peer would take that for this side's death: a backup would claim the
    /// machine of a primary that lives. So the output is shut behind the message, reading goes
    /// on, and the connection closes once the peer, having read to the end, closes its side;
    /// `linger` bounds the wait for a peer that does not (a paused one).
    @discardableResult
    public func close(after message: WireMessage, linger: TimeAmount = .seconds(2)) -> EventLoopFuture<Void> {
        let deadline = eventLoop.scheduleTask(in: linger) { self.close(promise: nil) }
        closeFuture.whenComplete { _ in deadline.cancel() }
        writeAndFlush(message).whenComplete { written in
            guard case .success = written else { return self.close(promise: nil) }
            let shut = self.eventLoop.makePromise(of: Void.self)
            shut.futureResult.whenFailure { _ in self.close(promise: nil) }
            self.close(mode: .output, promise: shut)
        }
        return closeFuture
    }
}
