import Testing
@testable import Registry

@Suite("registries.conf and credentials files")
struct ConfigurationTests {
    static let conf = """
    # A host whose Docker Hub traffic goes through a mirror.
    unqualified-search-registries = ["docker.io", "quay.io"]

    [[registry]]
    prefix = "docker.io"
    location = "docker.io"

    [[registry.mirror]]
    location = "mirror.example:5000"
    insecure = true

    [[registry.mirror]]
    location = "mirror2.example/hub"

    [[registry]]
    location = "blocked.example"
    blocked = true

    [[registry]]
    prefix = "example.com/team"
    location = "internal.example/team-mirror"
    mirror = [{ location = "m.example", insecure = false }]
    mirror-by-digest-only = true

    [aliases]
    "app" = "quay.io/team/app"
    """

    @Test("mirrors are tried in order, then the registry (docker.io at registry-1.docker.io); locations keep the path under the prefix")
    func endpoints() throws {
        var configuration = RegistryConfiguration()
        try configuration.merge(Self.conf, from: "test.conf")
        let hub = try configuration.endpoints(for: try Reference(parsing: "nginx"))
        #expect(hub.map(\.host) == ["mirror.example:5000", "mirror2.example", "registry-1.docker.io"])
        #expect(hub.map(\.repository) == ["library/nginx", "hub/library/nginx", "library/nginx"])
        #expect(hub.map(\.insecure) == [true, false, false])
        #expect(hub.map(\.isMirror) == [true, true, false])
        #expect(configuration.aliases["app"] == "quay.io/team/app")

        // Digest-only mirrors are skipped for tags.
        let byTag = try configuration.endpoints(for: try Reference(parsing: "example.com/team/x:1"))
        #expect(byTag.map(\.host) == ["internal.example"] && byTag[0].repository == "team-mirror/x")
        let byDigest = try configuration.endpoints(for: try Reference(parsing: "example.com/team/x@sha256:" + String(repeating: "c", count: 64)))
        #expect(byDigest.map(\.host) == ["m.example", "internal.example"])

        // Unlisted registries are fetched as named.
        #expect(try configuration.endpoints(for: try Reference(parsing: "quay.io/a/b")).map(\.host) == ["quay.io"])
        #expect(throws: RegistryError.blocked(reference: "blocked.example/x:latest", registry: "blocked.example", file: "test.conf")) {
            try configuration.endpoints(for: try Reference(parsing: "blocked.example/x"))
        }
    }

    @Test("a drop-in replaces an entry with the same prefix; a malformed file names its line")
    func mergeAndErrors() throws {
        var configuration = RegistryConfiguration()
        try configuration.merge(Self.conf, from: "a.conf")
        try configuration.merge("[[registry]]\nprefix = \"docker.io\"\nlocation = \"hub.internal\"\n", from: "b.conf")
        #expect(try configuration.endpoints(for: try Reference(parsing: "nginx")).map(\.host) == ["hub.internal"])
        var bad = RegistryConfiguration()
        #expect(throws: RegistryError.configuration(file: "c.conf", reason: "line 3: a string is not closed on its line")) {
            try bad.merge("[[registry]]\nprefix = \"x\"\nlocation = \"y\n", from: "c.conf")
        }
        #expect(throws: RegistryError.self) { try bad.merge("[registries.search]\nregistries = ['docker.io']\n", from: "v1.conf") }
        #expect(throws: RegistryError.self) { try bad.merge("[[registry]]\ninsecure = \"yes\"\nlocation = \"x\"\n", from: "d.conf") }
    }

    @Test("TOML: escapes, literal strings, inline tables, arrays over lines, comments")
    func toml() throws {
        let value = try TOMLParser.parse("""
        a = "x\\ty\\u00e9" # comment
        b = 'C:\\\\path'
        c = [
          "one", # first
          "two",
        ]
        d.e = { f = true, g = 42 }
        """)
        #expect(value["a"] == .string("x\tyé"))
        #expect(value["b"] == .string("C:\\\\path"))
        #expect(value["c"] == .array([.string("one"), .string("two")]))
        #expect(value["d"]?.table?["e"]?.table?["g"] == .integer(42))
        #expect(throws: TOMLError.self) { try TOMLParser.parse("a = 1\na = 2\n") }
        #expect(throws: TOMLError.self) { try TOMLParser.parse("a = \"\"\"x\"\"\"\n") }
    }

    @Test("credentials: the most specific key wins, Docker Hub's legacy key works, login keeps other entries")
    func credentials() throws {
        let directory = "/tmp/netctl-credentials-\(getpid())"
        defer { _ = try? removeTree(directory) }
        let file = directory + "/auth.json"
        let store = CredentialStore(files: [file])
        try store.store(Credential(username: "u", password: "p:w"), key: "registry.example")
        try store.store(Credential(username: "team", password: "t"), key: "registry.example/team")
        try store.store(Credential(username: "hub", password: "h"), key: "https://index.docker.io/v1/")
        #expect(try store.credential(registry: "registry.example", repository: "other/app") == Credential(username: "u", password: "p:w"))
        #expect(try store.credential(registry: "registry.example", repository: "team/app")?.username == "team")
        #expect(try store.credential(registry: "docker.io", repository: "library/nginx")?.username == "hub")
        #expect(try store.credential(registry: "elsewhere", repository: "x") == nil)
        try store.store(nil, key: "registry.example")
        #expect(try store.credential(registry: "registry.example", repository: "other/app") == nil)
        #expect(try store.credential(registry: "registry.example", repository: "team/app")?.username == "team")
        #expect(throws: RegistryError.self) { try store.store(nil, key: "registry.example") }
        var st = stat()
        stat(file, &st)
        #expect(st.st_mode & 0o777 == 0o600)
        try writeFile(file, "not json")
        #expect(throws: RegistryError.credentials(file: file, reason: "it is not JSON")) {
            try store.credential(registry: "x", repository: "y")
        }
    }

    @Test("WWW-Authenticate challenges: quoted values with commas, Basic")
    func challenges() {
        let (scheme, parameters) = Authorizer.parse(#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#)
        #expect(scheme == "bearer")
        #expect(parameters == ["realm": "https://auth.example/token", "service": "registry.example", "scope": "repository:a/b:pull,push"])
        #expect(Authorizer.parse(#"Basic realm="x""#).scheme == "basic")
        #expect(percentEncoded("repository:a/b:pull") == "repository%3Aa%2Fb%3Apull")
        #expect(URLParts.host(of: "https://auth.example:8443/token?x") == "auth.example:8443")
    }
}

import Glibc
import Primitives
