import Foundation

/// The generation a process stamps on the frames it sends, shared by its connections and raised
/// as the role's generation moves (DESIGN.md, "One primary"). On a backup it is also the oldest
/// generation whose frames are still taken: a primary fenced off by a newer one is refused at its
/// next frame, before anything in it is handled.
public final class FencingToken: @unchecked Sendable {
    private let lock = NSLock()
    private var current: UInt64

    public init(_ generation: UInt64 = 0) { current = generation }

    public var generation: UInt64 { lock.withLock { current } }

    /// Raises the token to `generation`; a token never goes back.
    public func raise(to generation: UInt64) { lock.withLock { current = max(current, generation) } }
}
