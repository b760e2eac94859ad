/// The parts of the OCI image spec (and Docker's `docker save` format) that running an
/// image needs. Field names follow the specs, hence the capitalised config keys.

public struct Descriptor: Codable, Sendable {
    public var mediaType: String?
    public var digest: Digest
    public var size: Int64
    public var platform: Platform?
    public var annotations: [String: String]?
}

public struct Platform: Codable, Sendable, Equatable, CustomStringConvertible {
    public var architecture: String
    public var os: String
    public var variant: String?
    public init(os: String, architecture: String, variant: String? = nil) { self.os = os; self.architecture = architecture; self.variant = variant }
    public var description: String { os + "/" + architecture + (variant.map { "/" + $0 } ?? "") }
}

/// index.json, or a nested image index.
public struct ImageIndex: Codable, Sendable {
    public var schemaVersion: Int
    public var mediaType: String?
    public var manifests: [Descriptor]
}

public struct ImageManifest: Codable, Sendable {
    public var schemaVersion: Int
    public var mediaType: String?
    public var config: Descriptor
    public var layers: [Descriptor]
}

/// One entry of a `docker save` archive's manifest.json.
struct DockerSaveEntry: Codable, Sendable {
    var Config: String
    var RepoTags: [String]?
    var Layers: [String]
}

/// The image configuration: how to run it and which layers (by uncompressed digest) build it.
public struct ImageConfig: Codable, Sendable, Equatable {
    public struct RunConfig: Codable, Sendable, Equatable {
        public var User: String?
        public var Env: [String]?
        public var Entrypoint: [String]?
        public var Cmd: [String]?
        public var WorkingDir: String?
        public var ExposedPorts: [String: Empty]?
        public var StopSignal: String?

        public init(User: String? = nil, Env: [String]? = nil, Entrypoint: [String]? = nil, Cmd: [String]? = nil,
                    WorkingDir: String? = nil, ExposedPorts: [String: Empty]? = nil, StopSignal: String? = nil) {
            self.User = User; self.Env = Env; self.Entrypoint = Entrypoint; self.Cmd = Cmd
            self.WorkingDir = WorkingDir; self.ExposedPorts = ExposedPorts; self.StopSignal = StopSignal
        }
    }

    public struct Empty: Codable, Sendable, Equatable { public init() {} }

    public struct RootFS: Codable, Sendable, Equatable {
        public var type: String
        public var diff_ids: [Digest]
    }

    public var architecture: String?
    public var os: String?
    public var variant: String?
    /// When it was built (RFC 3339), as `docker images` shows it.
    public var created: String?
    public var config: RunConfig?
    public var rootfs: RootFS
}

public enum MediaType {
    public static let ociIndex = "application/vnd.oci.image.index.v1+json"
    public static let dockerList = "application/vnd.docker.distribution.manifest.list.v2+json"
    public static let ociManifest = "application/vnd.oci.image.manifest.v1+json"
    public static let dockerManifest = "application/vnd.docker.distribution.manifest.v2+json"
}
