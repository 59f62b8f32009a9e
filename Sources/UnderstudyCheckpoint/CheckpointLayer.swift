/// The checkpoint and event-log layer (issue 3) lives here: machine state as one value, the
/// event log between checkpoints, their versioned checksummed encoding. Not built yet; the
/// target exists so the layering in Package.swift is the one the next issues fill in.
public enum CheckpointLayer {
    /// The encoding version a checkpoint will carry; bumped with every change to a saved struct.
    public static let formatVersion: UInt16 = 0
}
