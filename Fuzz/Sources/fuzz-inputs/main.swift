import CNI
@_spi(Fuzzing) import Firewall
import Glibc
import Images
import NetCore
@_spi(Fuzzing) import Netlink
import Netavark
import Primitives
@_spi(Fuzzing) import Registry

// The parsers of untrusted input other than DNS: the first byte of an input picks one, the
// rest is what it reads. Refusing is fine; crashing, hanging or reading out of bounds is not.
@_silgen_name("LLVMFuzzerRunDriver")
func runFuzzer(_ argc: UnsafeMutablePointer<Int32>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
               _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32) -> Int32

/// An archive in memory, for the tar reader.
final class Bytes: ByteSource {
    let bytes: [UInt8]
    var offset = 0
    init(_ bytes: [UInt8]) { self.bytes = bytes }
    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let n = min(buffer.count, bytes.count - offset)
        if n > 0 { bytes[offset..<offset + n].withUnsafeBytes { buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[0..<n])) } }
        offset += n
        return n
    }
    func skip(_ count: Int64) throws { offset = min(bytes.count, offset + Int(clamping: count)) }
}

let exercise: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32 = { data, size in
    guard let data, size > 0 else { return 0 }
    let input = Array(UnsafeBufferPointer(start: data + 1, count: size - 1))
    switch data[0] % 8 {
    case 0:  // docker's -p
        if let mappings = try? PortMapping.parse(String(decoding: input, as: UTF8.self)) {
            for m in mappings where m.hostPortEnd != 0 && m.hostPortEnd < m.hostPort { abort() }
        }
    case 1:  // a CNI network configuration on stdin
        if let json = try? JSON.parse(input) {
            _ = try? BridgeConfig(json, version: "1.0.0", environment: nil, full: true)
            _ = json.text
        }
    case 2:  // netlink replies and notifications
        NetlinkFuzzing.exercise(input)
        FirewallFuzzing.exercise(input)
    case 3:  // a tar archive (image layers)
        let reader = TarReader(Bytes(input), what: "fuzz")
        var buffer = [UInt8](repeating: 0, count: 4096)
        for _ in 0..<10_000 {
            guard let entry = try? reader.next() else { break }
            if entry.size < 0 { abort() }
            _ = try? buffer.withUnsafeMutableBytes { try reader.readData(into: $0) }
        }
    case 4:  // netavark's options from Podman
        if let json = try? JSON.parse(input) { _ = try? NetavarkOptions(json: json) }
    default:  // image references, registries.conf, WWW-Authenticate challenges
        RegistryFuzzing.exercise(data[0] - 5, input)
    }
    return 0
}

var argc = CommandLine.argc
var argv = CommandLine.unsafeArgv
exit(runFuzzer(&argc, &argv, exercise))
