// swift-tools-version:6.1
import PackageDescription

// Arrows point one way: C interop -> Netlink / Firewall / Proxy / Images -> NetCore -> Runtime, CNI -> netctl, netctl-cni.
let package = Package(
    name: "netctl",
    products: [
        .library(name: "NetCore", targets: ["NetCore"]),
        .library(name: "Netlink", targets: ["Netlink"]),
        .library(name: "Firewall", targets: ["Firewall"]),
        .library(name: "Proxy", targets: ["Proxy"]),
        .library(name: "Images", targets: ["Images"]),
        .library(name: "Runtime", targets: ["Runtime"]),
        .executable(name: "netctl", targets: ["netctl"]),
        .executable(name: "netctl-cni", targets: ["netctl-cni"]),
        .library(name: "CNI", targets: ["CNI"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
    ],
    targets: [
        // Calls Swift cannot make itself: _GNU_SOURCE functions (setns, unshare, splice...),
        // ioctls and kernel header constants.
        .target(name: "CShim"),
        .systemLibrary(name: "CNetlink", pkgConfig: "libnl-3.0",
                       providers: [.apt(["libnl-3-dev"])]),
        .systemLibrary(name: "CSQLite", pkgConfig: "sqlite3",
                       providers: [.apt(["libsqlite3-dev"])]),
        .systemLibrary(name: "CNftables", pkgConfig: "libnftnl",
                       providers: [.apt(["libnftnl-dev", "libmnl-dev"])]),
        .target(name: "Netlink", dependencies: ["CShim", "CNetlink"]),
        // nftables over netlink (libnftnl + libmnl); shares Netlink's socket protocol and parser.
        .target(name: "Firewall", dependencies: ["CNftables", "Netlink"]),
        // The userland relay: epoll loops, splice for TCP, batched UDP.
        .target(name: "Proxy", dependencies: ["CShim", "Netlink"]),
        .systemLibrary(name: "CCrypto", pkgConfig: "libcrypto", providers: [.apt(["libssl-dev"])]),
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        // OCI images and `docker save` archives: verification, safe unpacking, the layer cache.
        .target(name: "Images", dependencies: ["CShim", "CCrypto", "CZlib"]),
        .target(name: "NetCore", dependencies: [
            "Netlink", "Firewall", "Proxy", "CSQLite", "CShim",
            .product(name: "Logging", package: "swift-log"),
        ]),
        // Runs images with runc on netctl networking: bundles, the monitor, container state.
        .target(name: "Runtime", dependencies: [
            "Images", "NetCore", "Proxy", "CShim",
            .product(name: "Logging", package: "swift-log"),
        ]),
        .executableTarget(name: "netctl", dependencies: [
            "NetCore", "Netlink", "Proxy", "Runtime", "Images",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        // The CNI plugin: protocol, configuration and results (CNI), and the executable.
        .target(name: "CNI", dependencies: ["NetCore", "Netlink"]),
        .executableTarget(name: "netctl-cni", dependencies: [
            "CNI", .product(name: "Logging", package: "swift-log"),
        ]),
        .testTarget(name: "CNITests", dependencies: ["CNI", "NetCore"]),
        .testTarget(name: "NetlinkTests", dependencies: ["Netlink"]),
        .testTarget(name: "FirewallTests", dependencies: ["Firewall", "Netlink"]),
        .testTarget(name: "NetCoreTests", dependencies: ["NetCore"]),
        .testTarget(name: "ProxyTests", dependencies: ["Proxy", "Netlink", "CShim"]),
        // Builds tar archives and OCI images for tests (crafted and hostile ones included).
        .target(name: "TestSupport", dependencies: ["Images", "CZlib"], path: "Tests/TestSupport"),
        .testTarget(name: "ImagesTests", dependencies: ["Images", "TestSupport"]),
        .testTarget(name: "RuntimeTests", dependencies: ["Runtime", "NetCore"]),
        .testTarget(name: "EndToEndTests", dependencies: ["NetCore", "Netlink", "Firewall", "Proxy", "CShim", "TestSupport", "Images"],
                    exclude: ["golden"]),  // read by path, see DNATTests
    ],
    swiftLanguageModes: [.v5]
)
