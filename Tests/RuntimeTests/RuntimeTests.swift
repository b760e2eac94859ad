import FoundationEssentials
import Glibc
import NetCore
import Primitives
@testable import Runtime
import Testing

@Suite struct RuntimeTests {
    /// A root filesystem with just /etc/passwd and /etc/group.
    func rootfs(passwd: String, group: String) throws -> String {
        let root = try makeTemporaryDirectory("/tmp/netctl-rootfs-")
        mkdir(root + "/etc", 0o755)
        try writeFile(root + "/etc/passwd", passwd)
        try writeFile(root + "/etc/group", group)
        return root
    }

    @Test func usersResolveAgainstTheImagesOwnFiles() throws {
        let root = try rootfs(passwd: "root:x:0:0::/root:/bin/sh\nweb:x:33:34::/var/www:/bin/false\n",
                              group: "root:x:0:\nwww:x:34:\nstaff:x:50:\n")
        defer { unlink(root + "/etc/passwd"); unlink(root + "/etc/group"); rmdir(root + "/etc"); rmdir(root) }
        func user(_ spec: String?) throws -> [UInt32] { let u = try resolveUser(spec, rootfs: root); return [u.uid, u.gid] }
        #expect(try user(nil) == [0, 0])
        #expect(try user("web") == [33, 34])
        #expect(try user("33") == [33, 34], "a uid in passwd takes its group")
        #expect(try user("1000") == [1000, 0], "a uid not in passwd runs with group 0, as Docker does")
        #expect(try user("web:staff") == [33, 50])
        #expect(try user("web:7") == [33, 7])
        #expect(throws: RuntimeError.unknownUser(user: "nobody", reason: "no such user in the image's /etc/passwd")) { try user("nobody") }
        #expect { try user("web:nogroup") } throws: { "\($0)".contains("no group nogroup") }
    }

    @Test func passwdIsNeverReadThroughASymlink() throws {
        let root = try makeTemporaryDirectory("/tmp/netctl-rootfs-")
        defer { unlink(root + "/etc"); rmdir(root) }
        symlink("/etc", root + "/etc")  // would read the host's /etc/passwd if followed
        #expect { try resolveUser("root", rootfs: root) } throws: { "\($0)".contains("no such user") }
    }

    @Test func bundleJoinsTheNetworkNamespaceWithDockersDefaults() throws {
        let spec = RuntimeSpec(args: ["/bin/serve"], env: ["PATH=/bin"], cwd: "/www", user: .init(uid: 33, gid: 34),
                               hostname: "abc", netns: "/var/lib/netctl/netns/ctr-abc", containerID: "abc",
                               etcFiles: ["/etc/hosts": "/x/hosts"])
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let json = String(decoding: try encoder.encode(spec), as: UTF8.self)
        #expect(json.contains(#"{"path":"/var/lib/netctl/netns/ctr-abc","type":"network"}"#))
        for type in ["pid", "ipc", "uts", "mount"] { #expect(json.contains(#"{"type":"\#(type)"}"#)) }
        #expect(json.contains(#""args":["/bin/serve"]"#) && json.contains(#""cwd":"/www""#))
        #expect(json.contains(#""uid":33"#) && json.contains(#""gid":34"#))
        #expect(json.contains(#""noNewPrivileges":true"#) && json.contains(#""terminal":false"#))
        #expect(json.contains("CAP_NET_BIND_SERVICE") && !json.contains("CAP_SYS_ADMIN") && !json.contains("CAP_NET_ADMIN"))
        #expect(json.contains(#"{"destination":"/etc/hosts","options":["rbind","rprivate"],"source":"/x/hosts","type":"bind"}"#))
        #expect(json.contains(#""/proc/kcore""#), "masked paths")
    }

    @Test func namesAndIDs() throws {
        for good in ["web", "web-1", "a.b_c", "0x"] { try NetworkManager.checkName(good, kind: "container") }
        for bad in ["", "-web", "we b", "web/1", String(repeating: "a", count: 65)] {
            #expect { try NetworkManager.checkName(bad, kind: "container") } throws: { error in
                guard case NetctlError.invalidName(kind: "container", value: bad, _) = error else { return false }
                return true
            }
        }
        let id = ContainerManager.randomID()
        #expect(id.count == 64 && id.allSatisfy(\.isHexDigit) && id != ContainerManager.randomID())
    }
}
