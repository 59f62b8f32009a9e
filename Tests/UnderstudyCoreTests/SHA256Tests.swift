import UnderstudyCore
import XCTest

final class SHA256Tests: XCTestCase {
    func testKnownVectors() {
        XCTAssertEqual(SHA256.hex(of: [UInt8]()), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        XCTAssertEqual(SHA256.hex(of: Array("abc".utf8)), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        XCTAssertEqual(
            SHA256.hex(of: Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8)),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
    }

    func testIncrementalEqualsOneShot() {
        let data = (0..<1000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        var hasher = SHA256()
        hasher.update(data[0..<3])
        hasher.update(data[3..<700])
        hasher.update(data[700...])
        var oneShot = SHA256()
        oneShot.update(data)
        XCTAssertEqual(hasher.finalize(), oneShot.finalize())
    }
}

final class ServiceAddressTests: XCTestCase {
    func testParsesIPv4IPv6AndLocalhost() throws {
        XCTAssertEqual(try ServiceAddress(parsing: "127.0.0.1:6379"), ServiceAddress(host: "127.0.0.1", port: 6379))
        XCTAssertEqual(try ServiceAddress(parsing: "[::1]:80"), ServiceAddress(host: "::1", port: 80))
        XCTAssertEqual(try ServiceAddress(parsing: "localhost:8080").host, "127.0.0.1")
        XCTAssertEqual(ServiceAddress(host: "::1", port: 80).description, "[::1]:80")
    }

    func testRefusesMalformed() {
        for text in ["6379", "host:", ":80", "127.0.0.1:99999", "127.0.0.1:http", ""] {
            XCTAssertThrowsError(try ServiceAddress(parsing: text), text) { error in
                XCTAssertTrue("\(error)".contains("is not HOST:PORT"), "\(error)")
            }
        }
    }
}
