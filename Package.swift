// swift-tools-version:6.1
import PackageDescription

// Arrows point one way:
//   C interop, Primitives (the leaf: shared value types and OS helpers)
//   -> Netlink -> Firewall -> NetCore (networks, endpoints, IPAM, state, publishing);  Proxy;  Images -> Registry
//   -> ProxyService (NetCore + Proxy), NameService (NetCore) -> Agent (+ Firewall) -> Runtime (+ Images, Registry);
//      CNI (NetCore); Netavark (NetCore + Agent)
//   -> netctl, netctl-cni, netctl-agent, netctl-netavark.
let package = Package(
    name: "netctl",
    products: [
        .library(name: "Primitives", targets: ["Primitives"]),
        .library(name: "NetCore", targets: ["NetCore"]),
        .library(name: "Netlink", targets: ["Netlink"]),
        .library(name: "Firewall", targets: ["Firewall"]),
        .library(name: "Proxy", targets: ["Proxy"]),
        .library(name: "ProxyService", targets: ["ProxyService"]),
        .library(name: "NameService", targets: ["NameService"]),
        .library(name: "Agent", targets: ["Agent"]),
        .library(name: "Images", targets: ["Images"]),
        .library(name: "Registry", targets: ["Registry"]),
        .library(name: "Runtime", targets: ["Runtime"]),
        .library(name: "CNI", targets: ["CNI"]),
        .library(name: "Netavark", targets: ["Netavark"]),
        .executable(name: "netctl", targets: ["netctl"]),
        .executable(name: "netctl-cni", targets: ["netctl-cni"]),
        .executable(name: "netctl-agent", targets: ["netctl-agent"]),
        .executable(name: "netctl-netavark", targets: ["netctl-netavark"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
    ],
    targets: [
        // C interop, one target per concern: calls Swift cannot make itself (_GNU_SOURCE
        // functions, macros, ioctls), and the system libraries.
        .target(name: "CProcess"),      // namespaces, threads, processes, signals
        .target(name: "CSocket"),       // splice, accept4, recvmmsg/sendmmsg, packet info
        .target(name: "CDetached"),     // detached helpers: batched netlink deletions, held descriptors
        .target(name: "CFilesystem"),   // mounts, openat2, overlay whiteouts
        .systemLibrary(name: "CNetlink", pkgConfig: "libnl-route-3.0",
                       providers: [.apt(["libnl-3-dev", "libnl-route-3-dev"])]),
        .systemLibrary(name: "CSQLite", pkgConfig: "sqlite3",
                       providers: [.apt(["libsqlite3-dev"])]),
        .systemLibrary(name: "CNftables", pkgConfig: "libnftnl",
                       providers: [.apt(["libnftnl-dev", "libmnl-dev"])]),
        .systemLibrary(name: "CCrypto", pkgConfig: "libcrypto", providers: [.apt(["libssl-dev"])]),
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        .target(name: "CCurl", linkerSettings: [.linkedLibrary("dl")]),  // libcurl, loaded when a pull needs it (libcurl4-openssl-dev)

        // The leaf (over C interop only): addresses and prefixes, socket and MAC addresses,
        // process identity and spawning, the monotonic clock and timestamps, file helpers.
        .target(name: "Primitives", dependencies: ["CProcess"]),

        // rtnetlink: links, addresses, routes, network namespaces.
        .target(name: "Netlink", dependencies: ["Primitives", "CNetlink", "CProcess", "CFilesystem", "CDetached"]),
        // nftables and conntrack over netlink (libnftnl + libmnl); shares Netlink's socket protocol and parser.
        .target(name: "Firewall", dependencies: ["Primitives", "Netlink", "CNftables"]),
        // The userland relay: epoll loops, splice for TCP, batched UDP.
        .target(name: "Proxy", dependencies: ["Primitives", "CSocket", "CProcess"]),
        // OCI images and `docker save` archives: verification, safe unpacking, the layer cache.
        .target(name: "Images", dependencies: ["Primitives", "CFilesystem", "CCrypto", "CZlib"]),
        // Registries: references, registries.conf, credentials, and pulls over libcurl into the store.
        .target(name: "Registry", dependencies: ["Primitives", "Images", "CCurl"]),
        // Networks, endpoints, IPAM, state, publishing and reconciliation: what runtimes embed.
        .target(name: "NetCore", dependencies: [
            "Primitives", "Netlink", "Firewall", "CSQLite", "CDetached",
            .product(name: "Logging", package: "swift-log"),
        ]),
        // The proxy as a service: relays NetCore's proxied share, follows state, publishes counters.
        .target(name: "ProxyService", dependencies: [
            "Primitives", "NetCore", "Proxy", "CProcess",
            .product(name: "Logging", package: "swift-log"),
        ]),
        // The name service: a DNS server for networks with names.
        .target(name: "NameService", dependencies: [
            "Primitives", "NetCore", "CSocket", "CProcess",
            .product(name: "Logging", package: "swift-log"),
        ]),
        // The resident agent: serves names and keeps the firewall whole; started on demand.
        .target(name: "Agent", dependencies: [
            "Primitives", "NetCore", "Firewall", "NameService", "CSocket",
            .product(name: "Logging", package: "swift-log"),
        ]),
        // Runs images with runc on netctl networking: bundles, the monitor, container state.
        .target(name: "Runtime", dependencies: [
            "Primitives", "Images", "Registry", "NetCore", "Proxy", "ProxyService", "NameService", "Agent", "CProcess", "CFilesystem", "CSocket",
            .product(name: "Logging", package: "swift-log"),
        ]),
        // The CNI plugin: protocol, configuration and results.
        .target(name: "CNI", dependencies: ["Primitives", "NetCore", "Netlink"]),
        // Podman's network backend protocol (netavark's): options, status blocks, errors.
        .target(name: "Netavark", dependencies: ["Primitives", "NetCore", "Agent"]),
        .executableTarget(name: "netctl", dependencies: [
            "Primitives", "NetCore", "Netlink", "Proxy", "ProxyService", "Agent", "Runtime", "Images", "Registry",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        .executableTarget(name: "netctl-cni", dependencies: [
            "CNI", "Primitives", .product(name: "Logging", package: "swift-log"),
        ]),
        .executableTarget(name: "netctl-agent", dependencies: ["Agent", "Primitives", .product(name: "Logging", package: "swift-log")]),
        .executableTarget(name: "netctl-netavark", dependencies: [
            "Netavark", "Primitives", .product(name: "Logging", package: "swift-log"),
        ]),

        // Test helpers: a mock netlink socket, tar archives and OCI images (crafted and hostile ones included).
        .target(name: "TestSupport", dependencies: ["Primitives", "Netlink", "Images", "CZlib"], path: "Tests/TestSupport"),
        .testTarget(name: "PrimitivesTests", dependencies: ["Primitives"]),
        .testTarget(name: "CNITests", dependencies: ["CNI", "NetCore", "Primitives"]),
        .testTarget(name: "NetavarkTests", dependencies: ["Netavark", "NetCore", "Primitives"]),
        .testTarget(name: "NetlinkTests", dependencies: ["Netlink", "Primitives", "TestSupport", "CNetlink"]),
        .testTarget(name: "FirewallTests", dependencies: ["Firewall", "Netlink", "Primitives", "TestSupport"]),
        .testTarget(name: "NetCoreTests", dependencies: ["NetCore", "Netlink", "Primitives", "TestSupport", "CNetlink"]),
        .testTarget(name: "NameServiceTests", dependencies: ["NameService", "NetCore", "Primitives"]),
        .testTarget(name: "ProxyTests", dependencies: ["Proxy", "Primitives", "CSocket"]),
        .testTarget(name: "ImagesTests", dependencies: ["Images", "Primitives", "TestSupport"]),
        .testTarget(name: "RegistryTests", dependencies: ["Registry", "Images", "Primitives"]),
        .testTarget(name: "RuntimeTests", dependencies: ["Runtime", "NetCore", "Primitives"]),
        .testTarget(name: "EndToEndTests", dependencies: ["NetCore", "Netlink", "Firewall", "Proxy", "Primitives", "CProcess",
                                                          "CSocket", "TestSupport", "Images"],
                    exclude: ["golden"]),  // read by path, see DNATTests
    ],
    swiftLanguageModes: [.v6]
)
