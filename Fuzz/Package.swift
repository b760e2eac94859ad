// swift-tools-version:6.1
import PackageDescription

// Fuzz targets for netctl's parsers of untrusted input, kept out of the main package: they
// build only with libFuzzer (`-sanitize=fuzzer`), which tools/fuzz passes.
//
//     tools/fuzz [SECONDS]
let package = Package(
    name: "netctl-fuzz",
    dependencies: [
        .package(name: "netctl", path: ".."),
    ],
    targets: [
        // DNS queries as the name server receives them, from any client, over UDP and TCP.
        .executableTarget(
            name: "fuzz-dns",
            dependencies: [.product(name: "NameService", package: "netctl")]
        ),
        // The other parsers of untrusted input: -p specs, CNI configurations, netlink
        // messages, tar archives, netavark's options, image references, registries.conf and
        // registry challenges (the input's first byte picks one).
        .executableTarget(
            name: "fuzz-inputs",
            dependencies: [
                .product(name: "NetCore", package: "netctl"), .product(name: "CNI", package: "netctl"),
                .product(name: "Netavark", package: "netctl"), .product(name: "Images", package: "netctl"),
                .product(name: "Registry", package: "netctl"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
