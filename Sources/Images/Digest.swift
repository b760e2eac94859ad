import CCrypto

/// A content digest as OCI writes it: `sha256:` and 64 lowercase hex digits.
public struct Digest: Hashable, Codable, Sendable, CustomStringConvertible {
    public let hex: String
    public var description: String { "sha256:" + hex }
    /// The first 12 hex digits, as `docker images` shows them.
    public var short: String { String(hex.prefix(12)) }

    public init(hex: String) throws {
        guard hex.utf8.count == 64, hex.utf8.allSatisfy({ ($0 >= 48 && $0 <= 57) || ($0 >= 97 && $0 <= 102) }) else {
            throw ImageError.invalid(what: "digest", reason: "\"\(hex)\" is not 64 lowercase hex digits")
        }
        self.hex = hex
    }

    public init(parsing text: String) throws {
        guard text.hasPrefix("sha256:") else {
            throw ImageError.unsupported(what: "digest \"\(text)\"", reason: "only sha256 digests are verified")
        }
        try self.init(hex: String(text.dropFirst(7)))
    }

    public init(from decoder: Decoder) throws {
        try self.init(parsing: try decoder.singleValueContainer().decode(String.self))
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}

/// Streaming SHA-256 (OpenSSL's EVP, which uses the CPU's SHA extensions where present).
public final class SHA256 {
    private let context: OpaquePointer

    public init() {
        context = EVP_MD_CTX_new()
        EVP_DigestInit_ex(context, EVP_sha256(), nil)
    }

    deinit { EVP_MD_CTX_free(context) }

    public func update(_ bytes: UnsafeRawBufferPointer) {
        if bytes.count > 0 { EVP_DigestUpdate(context, bytes.baseAddress, bytes.count) }
    }

    /// Starts over, as if new.
    public func reset() { EVP_DigestInit_ex(context, EVP_sha256(), nil) }

    public func update(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { update($0) }
    }

    public func finish() -> Digest {
        var out = [UInt8](repeating: 0, count: 32)
        var length: UInt32 = 0
        EVP_DigestFinal_ex(context, &out, &length)
        let digits = Array("0123456789abcdef".utf8)
        var hex = [UInt8]()
        hex.reserveCapacity(64)
        for byte in out { hex.append(digits[Int(byte >> 4)]); hex.append(digits[Int(byte & 15)]) }
        return try! Digest(hex: String(decoding: hex, as: UTF8.self))
    }

    public static func digest(_ bytes: [UInt8]) -> Digest {
        let hasher = SHA256()
        hasher.update(bytes)
        return hasher.finish()
    }
}
