/// The parts of the OCI image spec (and Docker's `docker save` format) that running an
/// image needs. Field names follow the specs, hence the capitalised config keys.

struct Descriptor: Codable, Sendable {
    var mediaType: String?
    var digest: Digest
    var size: Int64
    var platform: Platform?
}

struct Platform: Codable, Sendable {
    var architecture: String
    var os: String
    var variant: String?
}

/// index.json, or a nested image index.
struct ImageIndex: Codable, Sendable {
    var schemaVersion: Int
    var mediaType: String?
    var manifests: [Descriptor]
}

struct ImageManifest: Codable, Sendable {
    var schemaVersion: Int
    var mediaType: String?
    var config: Descriptor
    var layers: [Descriptor]
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
    public var config: RunConfig?
    public var rootfs: RootFS
}

enum MediaType {
    static let ociIndex = "application/vnd.oci.image.index.v1+json"
    static let dockerList = "application/vnd.docker.distribution.manifest.list.v2+json"
    static let ociManifest = "application/vnd.oci.image.manifest.v1+json"
    static let dockerManifest = "application/vnd.docker.distribution.manifest.v2+json"
}
