/// A `HOST:PORT` as given on the command line (`127.0.0.1:6379`, `[::1]:6379`, `localhost:80`).
public struct ServiceAddress: Hashable, Sendable, CustomStringConvertible {
    public let host: String
    public let port: UInt16

    public enum ParseError: Error, CustomStringConvertible, Equatable {
        case malformed(String)
        public var description: String {
            switch self {
            case .malformed(let text):
                return "'\(text)' is not HOST:PORT (for example 127.0.0.1:6379 or [::1]:6379)"
            }
        }
    }

    public init(host: String, port: UInt16) {
        self.host = host
        self.port = port
    }

    public init(parsing text: String) throws(ParseError) {
        guard let colon = text.lastIndex(of: ":"), let port = UInt16(text[text.index(after: colon)...]) else {
            throw .malformed(text)
        }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty else { throw .malformed(text) }
        self.host = host == "localhost" ? "127.0.0.1" : host
        self.port = port
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}
