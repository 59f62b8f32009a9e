extension Duration {
    /// Whole nanoseconds (a metric timer's unit, a DispatchTime interval).
    public var nanoseconds: Int64 { components.seconds &* 1_000_000_000 &+ components.attoseconds / 1_000_000_000 }
    /// Whole milliseconds (what log lines report).
    public var milliseconds: Int64 { components.seconds &* 1000 &+ components.attoseconds / 1_000_000_000_000_000 }
}
