import Testing
@testable import Registry

@Suite("References, read as Docker reads them")
struct ReferenceTests {
    @Test("short names go to docker.io, official images under library/, tags default to latest")
    func normalization() throws {
        #expect(try Reference(parsing: "nginx").description == "docker.io/library/nginx:latest")
        #expect(try Reference(parsing: "dockersamples/101-tutorial").description == "docker.io/dockersamples/101-tutorial:latest")
        #expect(try Reference(parsing: "nginx:1.25-alpine").tag == "1.25-alpine")
        #expect(try Reference(parsing: "docker.io/nginx").repository == "library/nginx")
        let local = try Reference(parsing: "localhost:5000/app@sha256:" + String(repeating: "a", count: 64))
        #expect(local.registry == "localhost:5000" && local.repository == "app" && local.tag == nil)
        #expect(local.manifestReference == "sha256:" + String(repeating: "a", count: 64))
        let both = try Reference(parsing: "quay.io/team/app:v1@sha256:" + String(repeating: "b", count: 64))
        #expect(both.registry == "quay.io" && both.tag == "v1" && both.digest != nil)
        #expect(try Reference(parsing: "localhost/app").registry == "localhost")
        #expect(try Reference(parsing: "127.0.0.1:5000/a/b/c:t").repository == "a/b/c")
        #expect(try Reference(parsing: "nginx").familiarName == "nginx")
        #expect(try Reference(parsing: "a/b").familiarName == "a/b")
        #expect(try Reference(parsing: "host.io/a").familiarName == "host.io/a")
    }

    @Test("bad references are refused with Docker's kind of reason", arguments: [
        ("", "empty"), ("Nginx", "lowercase"), ("nginx:", "tag"), ("nginx:-x", "tag"), ("a//b", "empty"),
        ("nginx@sha256:abc", "digest"), ("-a", "component"), ("a_-b", "component"), ("host:99999/a", "registry"),
        ("nginx:" + String(repeating: "t", count: 129), "tag"),
    ])
    func refusals(text: String, reason: String) {
        #expect {
            try Reference(parsing: text)
        } throws: { error in
            guard case .invalidReference(let t, let r) = error as? RegistryError else { return false }
            return t == text && r.contains(reason)
        }
    }

    @Test("registries.conf short-name aliases apply before docker.io, keeping the given tag")
    func aliases() throws {
        let aliases = ["app": "quay.io/team/app", "web": "localhost:5000/web:stable"]
        #expect(try Reference(parsing: "app", aliases: aliases).description == "quay.io/team/app:latest")
        #expect(try Reference(parsing: "app:2", aliases: aliases).description == "quay.io/team/app:2")
        #expect(try Reference(parsing: "web", aliases: aliases).description == "localhost:5000/web:stable")
        #expect(try Reference(parsing: "other/app", aliases: aliases).registry == "docker.io")
    }
}
