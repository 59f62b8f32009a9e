/// What a backup accepts as the first message of a connection. The module itself is checked
/// when it arrives (the backup prepares it and compares the hash the hello named).
public enum Handshake {
    /// nil when `hello` is acceptable, otherwise the reason the backup refuses it.
    public static func refusal(of hello: WireMessage.Hello) -> String? {
        guard hello.protocolVersion == WireCodec.protocolVersion else {
            return "protocol version \(hello.protocolVersion) is not supported (this backup speaks \(WireCodec.protocolVersion))"
        }
        guard hello.mode != .none else { return "mode none needs no backup" }
        guard hello.moduleHash.count == 64, hello.moduleHash.allSatisfy(\.isHexDigit) else {
            return "the module hash is not a SHA-256 in hex"
        }
        guard hello.moduleBytes > 0, hello.moduleBytes <= WireLimits.moduleBytesMax else {
            return "a module of \(hello.moduleBytes) bytes is not one this backup takes (at most \(WireLimits.moduleBytesMax))"
        }
        guard hello.memoryLimitBytes > 0, hello.memoryLimitBytes <= WireLimits.memoryLimitMax else {
            return "a memory limit of \(hello.memoryLimitBytes) bytes is past what wasm32 addresses"
        }
        return nil
    }
}
