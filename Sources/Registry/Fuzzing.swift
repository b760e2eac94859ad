import Primitives

/// Entry points for the fuzz targets (Fuzz/): the registry-side parsers of untrusted input.
@_spi(Fuzzing) public enum RegistryFuzzing {
    /// `kind` picks the parser: a reference, a registries.conf, a WWW-Authenticate challenge.
    public static func exercise(_ kind: UInt8, _ input: [UInt8]) {
        let text = String(decoding: input, as: UTF8.self)
        switch kind % 3 {
        case 0:
            if let reference = try? Reference(parsing: text, aliases: ["app": "quay.io/team/app"]) {
                // What is accepted prints back to something accepted, naming the same thing.
                guard let again = try? Reference(parsing: reference.description), again == reference else { fatalError("round trip of \(text)") }
            }
        case 1:
            var configuration = RegistryConfiguration()
            if (try? configuration.merge(text, from: "fuzz.conf")) != nil, let reference = try? Reference(parsing: "nginx") {
                _ = try? configuration.endpoints(for: reference)
            }
        default:
            let (_, parameters) = Authorizer.parse(text)
            _ = parameters["realm"].map(URLParts.host(of:))
        }
    }
}
