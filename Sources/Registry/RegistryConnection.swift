import FoundationEssentials
import Glibc
import Images
import Primitives
import Synchronization

/// The authorization for one repository at one endpoint, shared by the threads that fetch
/// from it: the first 401 is answered (a Bearer token for the scope the challenge names,
/// or Basic), and every later request carries the result.
final class Authorizer: Sendable {
    let credential: Credential?
    private let header = Mutex<String?>(nil)

    init(credential: Credential?) { self.credential = credential }

    var current: String? { header.withLock { $0 } }

    /// Answers a `WWW-Authenticate` challenge; false when there is nothing new to try.
    func answer(_ challenge: String, repository: String, session: HTTPSession, trust: [UInt8], verify: Bool,
                host: String, reference: String) throws(RegistryError) -> Bool {
        let (scheme, parameters) = Authorizer.parse(challenge)
        switch scheme {
        case "basic":
            guard let credential else { return false }
            let value = "Basic " + Data((credential.username + ":" + credential.password).utf8).base64EncodedString()
            return header.withLock { current in
                if current == value { return false }
                current = value
                return true
            }
        case "bearer":
            guard let realm = parameters["realm"], realm.hasPrefix("https://") || realm.hasPrefix("http://") else {
                throw .http(host: host, what: "authentication", status: 401, message: "a Bearer challenge without a usable realm")
            }
            var query: [String] = []
            if let service = parameters["service"] { query.append("service=" + percentEncoded(service)) }
            if let scope = parameters["scope"] ?? (repository.isEmpty ? nil : "repository:\(repository):pull") {
                query.append("scope=" + percentEncoded(scope))
            }
            let url = realm + (realm.contains("?") ? "&" : "?") + query.joined(separator: "&")
            var headers: [String] = []
            if let credential {
                headers.append("Authorization: Basic " + Data((credential.username + ":" + credential.password).utf8).base64EncodedString())
            }
            var body: [UInt8] = []
            let response: HTTPSession.Response
            do {
                response = try session.perform(url, headers: headers, trust: trust, verify: verify) { bytes in
                    body += bytes
                    return body.count <= 1 << 20
                }
            } catch {
                throw RegistryConnection.transportError(error, host: URLParts.host(of: realm) ?? host)
            }
            if response.status == 401 || response.status == 403 {
                throw .unauthorized(reference: reference, host: URLParts.host(of: realm) ?? host, hadCredentials: credential != nil)
            }
            guard response.status == 200, let json = try? JSON.parse(body),
                  let token = json["token"]?.string ?? json["access_token"]?.string, !token.isEmpty else {
                throw .http(host: URLParts.host(of: realm) ?? host, what: "the token request", status: response.status,
                            message: "no token in the answer")
            }
            header.withLock { $0 = "Bearer " + token }
            return true
        default:
            throw .http(host: host, what: "authentication", status: 401, message: "an unsupported challenge \(quoted(challenge))")
        }
    }

    /// `Bearer realm="https://auth",service="registry",scope="repository:x:pull"`.
    static func parse(_ challenge: String) -> (scheme: String, parameters: [String: String]) {
        let trimmed = challenge.trimmed
        let space = trimmed.firstIndex(of: " ") ?? trimmed.endIndex
        let scheme = trimmed[..<space].lowercased()
        var parameters: [String: String] = [:]
        var rest = trimmed[space...].drop { $0 == " " }
        while let eq = rest.firstIndex(of: "=") {
            let key = String(rest[..<eq]).trimmed.lowercased()
            rest = rest[rest.index(after: eq)...]
            var value = ""
            if rest.first == "\"" {
                rest = rest.dropFirst()
                while let c = rest.first, c != "\"" {
                    if c == "\\", rest.count > 1 { rest = rest.dropFirst() }
                    value.append(rest.first!)
                    rest = rest.dropFirst()
                }
                rest = rest.dropFirst()
            } else {
                let end = rest.firstIndex(of: ",") ?? rest.endIndex
                value = String(rest[..<end]).trimmed
                rest = rest[end...]
            }
            parameters[key] = value
            rest = rest.drop { $0 == "," || $0 == " " }
        }
        return (scheme, parameters)
    }
}

enum URLParts {
    static func host(of url: String) -> String? {
        let parts = url.split(separator: "/", maxSplits: 3, omittingEmptySubsequences: false)
        guard parts.count >= 3, parts[0].hasSuffix(":"), parts[1].isEmpty else { return nil }
        return String(parts[2])
    }
}

func percentEncoded(_ text: String) -> String {
    var out = ""
    for byte in text.utf8 {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
             UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
            out.append(Character(Unicode.Scalar(byte)))
        default:
            out += "%" + String(byte >> 4, radix: 16, uppercase: true) + String(byte & 15, radix: 16, uppercase: true)
        }
    }
    return out
}

/// One thread's way to one repository at one endpoint: the distribution API's manifest and
/// blob requests, with authorization answered and failures named. Used by one thread at a
/// time; handed from one to another only through a lock.
final class RegistryConnection: @unchecked Sendable {
    let endpoint: RegistryConfiguration.Endpoint
    let reference: String
    let authorizer: Authorizer
    let trust: [UInt8]
    private let session: HTTPSession
    /// http only for an endpoint marked insecure whose https failed.
    private(set) var scheme: String

    init(endpoint: RegistryConfiguration.Endpoint, reference: String, authorizer: Authorizer, trust: [UInt8],
         scheme: String = "https") throws(RegistryError) {
        do { session = try HTTPSession() } catch { throw RegistryConnection.transportError(error, host: endpoint.host) }
        self.endpoint = endpoint; self.reference = reference; self.authorizer = authorizer; self.trust = trust; self.scheme = scheme
    }

    /// GET `/v2/REPOSITORY/PATH`. A 2xx body streams to `sink`; every other answer is an error.
    func get(_ path: String, accept: [String] = [], headers extra: [String] = [], what: String,
             start: (Int) -> Void = { _ in }, sink: (UnsafeRawBufferPointer) -> Bool) throws(RegistryError) -> HTTPSession.Response {
        var answered = false
        while true {
            var headers = extra
            if !accept.isEmpty { headers.append("Accept: " + accept.joined(separator: ", ")) }
            if let authorization = authorizer.current { headers.append("Authorization: " + authorization) }
            // An empty repository and path is the API's root, /v2/, which login checks.
            let url = "\(scheme)://\(endpoint.host)/v2/" + (endpoint.repository.isEmpty ? path : "\(endpoint.repository)/\(path)")
            let response: HTTPSession.Response
            do {
                response = try session.perform(url, headers: headers, trust: trust, verify: !endpoint.insecure, start: start, sink: sink)
            } catch let failure {
                if endpoint.insecure && scheme == "https", case .tls = failure { scheme = "http"; continue }
                if endpoint.insecure && scheme == "https", case .connect = failure { scheme = "http"; continue }
                throw RegistryConnection.transportError(failure, host: endpoint.host)
            }
            if response.status == 401, !answered, let challenge = response.header("www-authenticate") {
                answered = true
                let session = self.session
                if try authorizer.answer(challenge, repository: endpoint.repository, session: session, trust: trust,
                                         verify: !endpoint.insecure, host: endpoint.host, reference: reference) { continue }
            }
            if (200..<300).contains(response.status) { return response }
            throw error(for: response, what: what)
        }
    }

    private func error(for response: HTTPSession.Response, what: String) -> RegistryError {
        let codes = (try? JSON.parse(response.errorBody))?["errors"]?.array ?? []
        let code = codes.first?["code"]?.string ?? ""
        let message = codes.first?["message"]?.string ?? ""
        switch (response.status, code) {
        case (401, _): return .unauthorized(reference: reference, host: endpoint.host, hadCredentials: authorizer.credential != nil)
        case (403, _): return .denied(reference: reference, host: endpoint.host, message: message.isEmpty ? "403 forbidden" : message)
        case (404, "NAME_UNKNOWN"): return .repositoryNotFound(reference: reference, host: endpoint.host)
        case (404, "MANIFEST_UNKNOWN"),
             (404, "") where what == "manifest":
            return .manifestNotFound(reference: reference, host: endpoint.host)
        default: return .http(host: endpoint.host, what: what, status: response.status, message: String(message.prefix(200)))
        }
    }

    static func transportError(_ failure: HTTPSession.Failure, host: String) -> RegistryError {
        switch failure {
        case .tls(let detail): return .tls(host: host, detail: detail)
        case .connect(let detail): return .unreachable(host: host, detail: detail)
        case .aborted: return .unreachable(host: host, detail: "the transfer was stopped")
        case .other(let detail): return .unreachable(host: host, detail: detail)
        case .unavailable(let detail): return .clientUnavailable(detail)
        }
    }
}
