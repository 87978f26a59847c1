// swift-tools-version:6.1
import PackageDescription

// Arrows point one way:
//   OCI ← ContentStore, MetadataIndex, Upstream ← Mirror ← RegistryAPI ← RegistryMirror ← executable
//   ContentStore ← RegistryServer ← RegistryAPI, RegistryMirror
//   OCI ← ContentStore, MetadataIndex ← Bundles ← executable
// RegistryServer holds the NIO channel handlers (zero-copy file regions, the parse-error
// envelope, the connection guard) and builds the pipelines: plain HTTP/1, and TLS (NIOSSL)
// with HTTP/2 or HTTP/1.1 by ALPN; it knows neither the routes nor the cache.
// Mirror (the pull-through policy) and Bundles (OCI layout and docker-archive import/export,
// tar and gzip) are siblings: neither imports the other. What both need sits below them:
// `TransferEvent` (progress of a long copy) is in OCI, `AsyncSemaphore` in Upstream.
// Only the executable uses both.
let package = Package(
    name: "registry-mirror",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "registry-mirror", targets: ["registry-mirror"]),
        // bench/inprocess.sh: the warm manifest lookup through the router, no socket.
        .executable(name: "manifest-benchmark", targets: ["ManifestBenchmark"]),
    ],
    dependencies: [
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1", traits: ["FullFoundation"]),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-extras", from: "1.35.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-nio-http2", from: "1.46.0"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.8.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/vapor/postgres-nio", from: "1.33.2"),
    ],
    targets: [
        .systemLibrary(name: "COpenSSL", path: "Sources/COpenSSL"),
        .systemLibrary(name: "CSQLite", path: "Sources/CSQLite"),
        .systemLibrary(name: "CCurl", path: "Sources/CCurl"),
        .systemLibrary(name: "CCrypt", path: "Sources/CCrypt"),
        .systemLibrary(name: "CZlib", path: "Sources/CZlib"),
        // Each target declares exactly the modules its files import.
        .target(name: "OCI", dependencies: ["COpenSSL"]),
        .target(name: "ContentStore", dependencies: ["OCI"]),
        .target(name: "MetadataIndex", dependencies: ["OCI", "CSQLite"]),
        // The PostgreSQL index, apart so that SQLite-only code never links PostgresNIO.
        .target(name: "PostgresIndex", dependencies: [
            "OCI", "MetadataIndex",
            .product(name: "PostgresNIO", package: "postgres-nio"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        // Blobs in an S3-compatible bucket, signed by libcurl (CURLOPT_AWS_SIGV4).
        .target(name: "S3Store", dependencies: ["OCI", "ContentStore", "CCurl"]),
        .target(name: "Upstream", dependencies: [
            "OCI", "CCurl",
            .product(name: "Logging", package: "swift-log"),
        ]),
        .target(name: "Mirror", dependencies: [
            "OCI", "ContentStore", "MetadataIndex", "Upstream",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "CoreMetrics", package: "swift-metrics"),
        ]),
        .target(name: "Bundles", dependencies: [
            "OCI", "ContentStore", "MetadataIndex", "CZlib",
            .product(name: "Logging", package: "swift-log"),
        ]),
        .target(name: "RegistryServer", dependencies: [
            "ContentStore",
            .product(name: "HummingbirdCore", package: "hummingbird"),
            .product(name: "HTTPTypes", package: "swift-http-types"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
            .product(name: "NIOHTTPTypesHTTP1", package: "swift-nio-extras"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "NIOTLS", package: "swift-nio"),
            .product(name: "NIOHTTP2", package: "swift-nio-http2"),
            .product(name: "HummingbirdHTTP2", package: "hummingbird"),
        ]),
        .target(name: "RegistryAPI", dependencies: [
            "OCI", "ContentStore", "Mirror", "RegistryServer", "Upstream", "CCrypt",
            .product(name: "Hummingbird", package: "hummingbird"),
            .product(name: "HTTPTypes", package: "swift-http-types"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
        ]),
        .target(name: "RegistryMirror", dependencies: [
            "PostgresIndex",
            "OCI", "ContentStore", "MetadataIndex", "Upstream", "Mirror", "RegistryAPI", "RegistryServer", "S3Store",
            .product(name: "Hummingbird", package: "hummingbird"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "Yams", package: "Yams"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            .product(name: "Prometheus", package: "swift-prometheus"),
        ]),
        .executableTarget(name: "registry-mirror", dependencies: [
            "RegistryMirror", "Bundles", "OCI", "ContentStore", "MetadataIndex", "Mirror", "Upstream",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        .executableTarget(name: "ManifestBenchmark", dependencies: [
            "RegistryMirror",
            .product(name: "Hummingbird", package: "hummingbird"),
            .product(name: "HTTPTypes", package: "swift-http-types"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOEmbedded", package: "swift-nio"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ], path: "Benchmarks/ManifestBenchmark"),
        // A throwaway PostgreSQL cluster (initdb + pg_ctl) for the tests that need one.
        .target(name: "PostgresTestServer", path: "Tests/PostgresTestServer"),
        .testTarget(name: "RegistryMirrorTests", dependencies: [
            "PostgresIndex", "PostgresTestServer",
            "OCI", "ContentStore", "MetadataIndex", "Upstream", "Mirror", "Bundles", "RegistryAPI", "RegistryMirror", "S3Store",
            .product(name: "Hummingbird", package: "hummingbird"),
            .product(name: "HummingbirdTesting", package: "hummingbird"),
            .product(name: "HTTPTypes", package: "swift-http-types"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "Yams", package: "Yams"),
            .product(name: "CoreMetrics", package: "swift-metrics"),
        ]),
        .testTarget(name: "EndToEndTests", dependencies: [
            "PostgresTestServer",
            "OCI", "Upstream", "S3Store",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "Yams", package: "Yams"),
        ]),
    ],
    swiftLanguageModes: [.v6]
)
