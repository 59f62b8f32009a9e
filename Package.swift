// swift-tools-version:6.0
import Foundation
import PackageDescription

// Where setup installs wasmtime's wheel (scripts/setup.sh): baked into the build as the library's
// default path, as an rpath would be. The library is opened at run time, so a build without it
// still has the WasmKit engine.
let wasmtimeLibrary = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .appendingPathComponent(".build-python/wasmtime/linux-x86_64/_libwasmtime.so").path

// Layers, one direction of dependency:
//   UnderstudyCore (values, the world seam; no engine)
//   → UnderstudyMachine (the engines: WasmKit, and wasmtime through CWasmtime; devices, module preparation)
//   UnderstudyEventLog (Core only: the world's answers as a log, record and replay)
//   → UnderstudyCheckpoint (Machine + EventLog: checkpoints, recordings, replay verification)
//   UnderstudyReplication (Core + EventLog only, never WasmKit: wire protocol, modes)
//   → understudy (command line: joins machine, checkpoints and replication)
let package = Package(
    name: "Understudy",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "understudy", targets: ["understudy"]),
    ],
    dependencies: [
        .package(url: "https://github.com/swiftwasm/WasmKit.git", exact: "0.4.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", exact: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", exact: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics.git", exact: "2.13.0"),
        .package(url: "https://github.com/apple/swift-nio.git", exact: "2.101.3"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", exact: "2.37.6"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", exact: "2.4.1"),
    ],
    targets: [
        .target(name: "CUnderstudyHost"),
        .target(name: "CWasmtime", cSettings: [.define("UNDERSTUDY_WASMTIME_DEFAULT", to: "\"\(wasmtimeLibrary)\"")]),
        .systemLibrary(name: "CCompression", path: "Sources/CCompression"),
        .target(name: "UnderstudyCore", dependencies: ["CUnderstudyHost"]),
        .target(
            name: "UnderstudyMachine",
            dependencies: [
                "UnderstudyCore", "CWasmtime",
                .product(name: "WasmKit", package: "WasmKit"),
                .product(name: "WasmParser", package: "WasmKit"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ]
        ),
        .target(name: "UnderstudyEventLog", dependencies: ["UnderstudyCore"]),
        .target(
            name: "UnderstudyCheckpoint",
            dependencies: [
                "UnderstudyCore", "UnderstudyMachine", "UnderstudyEventLog", .product(name: "Metrics", package: "swift-metrics"),
            ]
        ),
        .target(
            name: "UnderstudyReplication",
            dependencies: [
                "UnderstudyCore", "UnderstudyEventLog", "CCompression",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ]
        ),
        .target(
            name: "UnderstudyProtection",
            dependencies: [
                "UnderstudyCore", "UnderstudyMachine", "UnderstudyEventLog", "UnderstudyCheckpoint", "UnderstudyReplication",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ]
        ),
        .executableTarget(
            name: "understudy",
            dependencies: [
                "UnderstudyMachine",
                "UnderstudyCheckpoint",
                "UnderstudyReplication",
                "UnderstudyProtection",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]
        ),
        // The checkpoint measurements of `make bench` (pause, scan cost, restore, replay).
        .executableTarget(
            name: "understudy-bench",
            dependencies: ["UnderstudyCore", "UnderstudyMachine", "UnderstudyCheckpoint"]
        ),
        .testTarget(name: "UnderstudyCoreTests", dependencies: ["UnderstudyCore"]),
        .testTarget(
            name: "UnderstudyReplicationTests",
            dependencies: [
                "UnderstudyReplication", "UnderstudyCore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        .testTarget(
            name: "UnderstudyCheckpointTests",
            dependencies: ["UnderstudyCheckpoint", "UnderstudyEventLog", "UnderstudyMachine", "UnderstudyCore"]
        ),
        .testTarget(
            name: "UnderstudyMachineTests",
            dependencies: [
                "UnderstudyMachine", "UnderstudyCore", "UnderstudyEventLog", "UnderstudyCheckpoint", "UnderstudyReplication",
                .product(name: "WAT", package: "WasmKit"),
                .product(name: "MetricsTestKit", package: "swift-metrics"),
            ]
        ),
        .testTarget(
            name: "UnderstudyProtectionTests",
            dependencies: [
                "UnderstudyProtection", "UnderstudyReplication", "UnderstudyEventLog", "UnderstudyCheckpoint", "UnderstudyMachine",
                "UnderstudyCore",
            ]
        ),
        // Real processes and real clients: starts the built `understudy` (UNDERSTUDY_BIN).
        .testTarget(
            name: "IntegrationTests",
            dependencies: [
                "UnderstudyCore", "UnderstudyReplication",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
    ]
)
