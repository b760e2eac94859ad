import Foundation
import Glibc
import Testing

@Suite("netctl port parse")
struct PortParseCLITests {
    func run(_ arguments: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
        var template = Array("/tmp/netctl-cli-XXXXXX".utf8CString)
        let directory = String(cString: mkdtemp(&template)!)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let out = open(directory + "/out", O_WRONLY | O_CREAT | O_CLOEXEC, 0o600)
        let err = open(directory + "/err", O_WRONLY | O_CREAT | O_CLOEXEC, 0o600)
        defer { close(out); close(err) }
        let status = try Child.spawn([Sandbox.netctl] + arguments, stdout: out, stderr: err).wait(timeout: 30)
        return (status, slurp(directory + "/out"), slurp(directory + "/err"))
    }

    @Test("prints one JSON array for all specs")
    func json() throws {
        let result = try run(["port", "parse", "8080:80", "127.0.0.1::53/udp", "[::1]:8000-8010:80"])
        #expect(result.status == 0)
        let parsed = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [[String: Any]])
        #expect(parsed.count == 3)
        #expect(parsed[0]["hostIP"] as? String == "" && parsed[0]["hostPort"] as? Int == 8080 && parsed[0]["hostPortEnd"] as? Int == 8080)
        #expect(parsed[1]["hostIP"] as? String == "127.0.0.1" && parsed[1]["hostPort"] as? Int == 0 && parsed[1]["proto"] as? String == "udp")
        #expect(parsed[2]["hostIP"] as? String == "::1" && parsed[2]["hostPort"] as? Int == 8000 && parsed[2]["hostPortEnd"] as? Int == 8010)
    }

    @Test("an invalid spec: non-zero exit and one line naming the problem")
    func invalid() throws {
        let result = try run(["port", "parse", "8080:80", "web:80:80"])
        #expect(result.status == 1 && result.stdout.isEmpty)
        #expect(result.stderr == "netctl: error: invalid port mapping \"web:80:80\": host address \"web\" is not an IP address (host names are not accepted)\n")
    }
}

@Suite("netctl proxy serve options")
struct ProxyServeOptionTests {
    @Test("bad values are refused before anything starts, saying what is allowed",
          arguments: [(["--workers", "0"], "--workers must be 1 or more"),
                      (["--copy-threshold=-1"], "--copy-threshold must be 0 (always splice) or more"),
                      (["--copy-threshold=4194304"], "--copy-threshold must be at most 1048576"),
                      (["--drain=-2"], "--drain must be 0 or more seconds"),
                      (["--backend-congestion-control=a-name-longer-than-the-kernel-allows"], "--backend-congestion-control needs an algorithm's name")])
    func badValues(arguments: [String], message: String) throws {
        let result = try PortParseCLITests().run(["proxy", "serve", "--state-dir", "/nonexistent/netctl-state"] + arguments)
        #expect(result.status == 1)
        #expect(result.stderr.hasPrefix("netctl: error: ") && result.stderr.contains(message) && result.stderr.split(separator: "\n").count == 1,
                "\(result.stderr)")
        #expect(access("/nonexistent/netctl-state", F_OK) != 0)
    }
}
