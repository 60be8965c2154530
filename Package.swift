// swift-tools-version: 6.1
import PackageDescription

/// One list of settings for every target: Swift 6 language mode is the default for tools 6.x;
/// `ExistentialAny` keeps existential costs visible.
let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
]

let package = Package(
    name: "ShardBank",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "shardbank", targets: ["shardbank"]),
        .library(name: "Sharding", targets: ["Sharding"]),
        .library(name: "MariaDB", targets: ["MariaDB"]),
        .library(name: "Etcd", targets: ["Etcd"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-configuration", from: "1.4.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.8.0"),
        .package(url: "https://github.com/x-sheep/swift-property-based", from: "2.0.1"),
    ],
    targets: [
        // Pure core: range maps, money, the directory hash. No I/O, no dependencies.
        .target(name: "Sharding", swiftSettings: swiftSettings),
        // Online range moves and rebalancing as pure decisions: the move's state machine, the planner.
        .target(name: "Moves", dependencies: ["Sharding"], swiftSettings: swiftSettings),

        // MariaDB Connector/C, seen through a small shim header.
        .systemLibrary(
            name: "CMariaDB",
            pkgConfig: "libmariadb",
            providers: [.apt(["libmariadb-dev"])]
        ),
        // Async MariaDB driver: connections, prepared statements, XA, pool.
        .target(
            name: "MariaDB",
            dependencies: [
                "CMariaDB",
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // etcd v3 client over the JSON gateway.
        .target(
            name: "Etcd",
            dependencies: [
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // Shard maps, node registry, id allocator and the watch-fed cache, kept in etcd.
        .target(
            name: "ClusterMetadata",
            dependencies: [
                "Sharding", "Etcd", "Health",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // Versioned schema migrations of a storage node's `bank_db`.
        .target(
            name: "BankSchema",
            dependencies: ["MariaDB", .product(name: "Logging", package: "swift-log")],
            swiftSettings: swiftSettings
        ),
        // The configuration file (appsettings.json's successor) + environment overrides.
        .target(
            name: "ShardBankConfig",
            dependencies: [
                "MariaDB", "Etcd", "Sharding",
                .product(name: "Configuration", package: "swift-configuration"),
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // The bank: distributed transactions across nodes (two-phase commit, in-doubt resolution).
        .target(
            name: "Ledger",
            dependencies: [
                "MariaDB", "BankSchema", "Sharding",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // The HTTP JSON API of `shardbank serve` (hummingbird 2): routes, request parsing, errors → HTTP.
        .target(
            name: "API",
            dependencies: [
                "Ledger", "ClusterMetadata", "Sharding", "Health", "MariaDB", "Mover", "Moves",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // Local clusters of real mariadbd and etcd processes, for tests and `demo`.
        .target(
            name: "LocalCluster",
            dependencies: ["MariaDB", "Etcd", .product(name: "Logging", package: "swift-log")],
            swiftSettings: swiftSettings
        ),
        // Health, pure: the heartbeat's wire format, how routers judge a node, the agent's decisions.
        .target(name: "Health", swiftSettings: swiftSettings),
        // The sidecar beside each MariaDB node: leased heartbeats in etcd, database checks.
        .target(
            name: "Agent",
            dependencies: [
                "Health", "ClusterMetadata", "Etcd", "MariaDB",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // Online range moves as a runner: the move state machine's steps against the nodes and etcd.
        .target(
            name: "Mover",
            dependencies: [
                "Moves", "Ledger", "BankSchema", "ClusterMetadata", "MariaDB", "Sharding",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // Operator actions behind `ctl`: bootstrap, status, benchmarks of the drivers; the bank's
        // runtime (metadata watch, pools that follow the node registry) that `serve` and `bench` run.
        .target(
            name: "Admin",
            dependencies: [
                "Sharding", "MariaDB", "Etcd", "ClusterMetadata", "BankSchema", "ShardBankConfig", "Ledger", "Health",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // The thin executable: argument parsing and wiring only.
        .executableTarget(
            name: "shardbank",
            dependencies: [
                "Admin", "LocalCluster", "ShardBankConfig", "ClusterMetadata", "Etcd", "MariaDB", "Sharding", "Ledger", "API", "Mover", "Moves",
                "BankSchema", "Agent", "Health",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),

        .testTarget(
            name: "UnitTests",
            dependencies: [
                "Sharding", "MariaDB", "Etcd", "ShardBankConfig", "Ledger", "API", "ClusterMetadata", "Health", "Moves", "Mover",
                .product(name: "PropertyBased", package: "swift-property-based"),
                .product(name: "Logging", package: "swift-log"),
                // The API's routes driven in-process (no sockets) for the answers given before the bank is asked.
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "IntegrationTests",
            dependencies: [
                "Sharding", "MariaDB", "Etcd", "ClusterMetadata", "BankSchema", "LocalCluster", "Admin",
                "ShardBankConfig", "Ledger", "Agent", "Health", "Mover", "Moves",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
    ]
)
