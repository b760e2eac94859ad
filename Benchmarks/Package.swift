// swift-tools-version:6.1
import PackageDescription

// Benchmarks for netctl, kept in their own package so the library never depends on
// package-benchmark. They need root and create bridges, veth pairs and network
// namespaces, so they run only inside a private network + mount namespace (they refuse
// to run otherwise):
//
//     cd Benchmarks && unshare --net --mount sh -c 'ip link set lo up && exec swift package benchmark'
//
// `lo` must be up for SwiftPM itself: in a new network namespace whose loopback is down,
// Foundation cannot create CFSocket's wakeup socket pair and `swift package benchmark`
// hangs for good after building BenchmarkTool.
let package = Package(
    name: "netctl-benchmarks",
    dependencies: [
        .package(name: "netctl", path: ".."),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        // The trait is required: the default traits pull a package that is not available here.
        .package(url: "https://github.com/ordo-one/package-benchmark", from: "1.38.1",
                 traits: ["MallocInterposer"]),
    ],
    targets: [
        // The DNAT path end to end (needs a private namespace; run it with tools/bench-dnat).
        .executableTarget(
            name: "dnat-bench",
            dependencies: [
                .product(name: "NetCore", package: "netctl"),
                .product(name: "Netlink", package: "netctl"),
                .product(name: "Firewall", package: "netctl"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Tools/DNATBench"
        ),
        // package-benchmark finds benchmark targets by their location: Benchmarks/<Name>.
        .executableTarget(
            name: "AttachBenchmarks",
            dependencies: [
                .product(name: "Benchmark", package: "package-benchmark"),
                .product(name: "NetCore", package: "netctl"),
                .product(name: "Netlink", package: "netctl"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Benchmarks/AttachBenchmarks",
            plugins: [
                .plugin(name: "BenchmarkPlugin", package: "package-benchmark"),
            ]
        ),
        .executableTarget(
            name: "ProxyBenchmarks",
            dependencies: [
                .product(name: "Benchmark", package: "package-benchmark"),
                .product(name: "Proxy", package: "netctl"),
                .product(name: "Netlink", package: "netctl"),
            ],
            path: "Benchmarks/ProxyBenchmarks",
            plugins: [
                .plugin(name: "BenchmarkPlugin", package: "package-benchmark"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
