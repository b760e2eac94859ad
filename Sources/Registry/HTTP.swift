import CCurl
import Glibc
import Primitives

/// One HTTP(S) connection's worth of libcurl: a reusable easy handle (keep-alive, TLS
/// session reuse), used by one thread at a time. libcurl is the system's well-kept client:
/// TLS with the system's CA store through OpenSSL, HTTP/2, redirects, ranges.
final class HTTPSession {
    struct Response {
        var status: Int
        /// The final response's headers, names lowercased.
        var headers: [(String, String)]
        /// The body when the status was not 2xx (or when the caller kept no sink): at most 64 KiB.
        var errorBody: [UInt8]

        func header(_ name: String) -> String? { headers.last(where: { $0.0 == name })?.1 }
    }

    enum Failure: Error {
        case tls(String)
        case connect(String)
        /// The sink refused the data (its own error is kept by the caller).
        case aborted
        case other(String)
        /// libcurl could not be loaded.
        case unavailable(String)
    }

    private let handle: UnsafeMutableRawPointer
    private var errorBuffer = [CChar](repeating: 0, count: Int(CURL_ERROR_SIZE) + 1)

    /// Loads libcurl (once per process); throws when this host lacks it.
    init() throws(Failure) {
        var message = [CChar](repeating: 0, count: 256)
        guard netctl_curl_load(&message, UInt(message.count)) == 0, let handle = netctl_curl_easy_init() else {
            throw .unavailable(String(cBuffer: message))
        }
        self.handle = handle
    }

    deinit { netctl_curl_easy_cleanup(handle) }

    /// Performs one request. Body bytes of a 2xx response go to `sink` (false aborts);
    /// redirects are followed (libcurl sends a custom Authorization header to the first
    /// host only, so blob storage behind a redirect never sees the registry's token).
    func perform(_ url: String, method: String = "GET", headers: [String], trust extra: [UInt8], verify: Bool,
                 start: (Int) -> Void = { _ in }, sink: (UnsafeRawBufferPointer) -> Bool) throws(Failure) -> Response {
        final class Context {
            var status = 0
            var headers: [(String, String)] = []
            var errorBody: [UInt8] = []
            var sink: (UnsafeRawBufferPointer) -> Bool
            var start: (Int) -> Void
            var started = false
            var aborted = false
            init(_ sink: @escaping (UnsafeRawBufferPointer) -> Bool, _ start: @escaping (Int) -> Void) { self.sink = sink; self.start = start }
        }
        return try withoutActuallyEscaping(sink) { (sink) throws(Failure) -> Response in
          try withoutActuallyEscaping(start) { (start) throws(Failure) -> Response in
            let context = Context(sink, start)
            let pointer = Unmanaged.passUnretained(context).toOpaque()
            netctl_curl_easy_reset(handle)
            var list: UnsafeMutablePointer<curl_slist>? = nil
            for header in headers { list = netctl_curl_slist_append(list, header) }
            defer { netctl_curl_slist_free_all(list) }
            netctl_curl_set_ptr(handle, CURLOPT_URL, url)
            netctl_curl_set_ptr(handle, CURLOPT_HTTPHEADER, list)
            netctl_curl_set_ptr(handle, CURLOPT_ERRORBUFFER, &errorBuffer)
            netctl_curl_set_long(handle, CURLOPT_FOLLOWLOCATION, 1)
            netctl_curl_set_long(handle, CURLOPT_MAXREDIRS, 10)
            netctl_curl_set_ptr(handle, CURLOPT_PROTOCOLS_STR, "http,https")
            netctl_curl_set_ptr(handle, CURLOPT_REDIR_PROTOCOLS_STR, "http,https")
            netctl_curl_set_long(handle, CURLOPT_NOSIGNAL, 1)
            netctl_curl_set_long(handle, CURLOPT_CONNECTTIMEOUT, 30)
            // A transfer that moves nothing for a minute has stalled.
            netctl_curl_set_long(handle, CURLOPT_LOW_SPEED_LIMIT, 1)
            netctl_curl_set_long(handle, CURLOPT_LOW_SPEED_TIME, 60)
            netctl_curl_set_ptr(handle, CURLOPT_USERAGENT, "netctl")
            // HTTP/1.1: layers come over parallel connections, one each, and a single bulk
            // stream gains nothing from HTTP/2 but its framing and flow control (measured in
            // docs/measurements.md); skopeo and Docker speak 1.1 to registries too.
            netctl_curl_set_long(handle, CURLOPT_HTTP_VERSION, CURL_HTTP_VERSION_1_1)
            if method == "HEAD" { netctl_curl_set_long(handle, CURLOPT_NOBODY, 1) }
            if !verify {
                netctl_curl_set_long(handle, CURLOPT_SSL_VERIFYPEER, 0)
                netctl_curl_set_long(handle, CURLOPT_SSL_VERIFYHOST, 0)
            } else if fileExists(HTTPSession.systemDirectory) {
                // The system's anchors by hash lookup in its directory, not the whole bundle
                // parsed for every connection (most of a small pull's CPU time); the
                // registry's own (certs.d) beside them, as Podman trusts them.
                netctl_curl_set_ptr(handle, CURLOPT_CAPATH, HTTPSession.systemDirectory)
                if extra.isEmpty { netctl_curl_set_ptr(handle, CURLOPT_CAINFO, nil) } else { try setAnchors(extra) }
            } else if !extra.isEmpty {
                // No hashed directory: the system's bundle (curl's default) plus the registry's own.
                try setAnchors((readBytes(HTTPSession.systemBundle, limit: 16 << 20) ?? []) + [10] + extra)
            }
            netctl_curl_set_ptr(handle, CURLOPT_HEADERDATA, pointer)
            netctl_curl_set_data_fn(handle, CURLOPT_HEADERFUNCTION) { data, size, count, user in
                let context = Unmanaged<Context>.fromOpaque(user!).takeUnretainedValue()
                let line = String(decoding: UnsafeRawBufferPointer(start: data, count: size * count), as: UTF8.self)
                    .trimmed
                if line.hasPrefix("HTTP/") {
                    // A new response (after a redirect or 100 Continue): its headers only.
                    let parts = line.split(separator: " ", maxSplits: 2)
                    context.status = parts.count > 1 ? Int(parts[1]) ?? 0 : 0
                    context.headers = []
                } else if let colon = line.firstIndex(of: ":") {
                    context.headers.append((line[..<colon].lowercased(), String(line[line.index(after: colon)...]).trimmed))
                }
                return size * count
            }
            netctl_curl_set_ptr(handle, CURLOPT_WRITEDATA, pointer)
            netctl_curl_set_data_fn(handle, CURLOPT_WRITEFUNCTION) { data, size, count, user in
                let context = Unmanaged<Context>.fromOpaque(user!).takeUnretainedValue()
                let bytes = UnsafeRawBufferPointer(start: data, count: size * count)
                if (200..<300).contains(context.status) {
                    // The final status, told once before its first body byte.
                    if !context.started { context.started = true; context.start(context.status) }
                    guard context.sink(bytes) else { context.aborted = true; return 0 }
                } else if context.errorBody.count < 65536 {
                    context.errorBody += bytes.prefix(65536 - context.errorBody.count)
                }
                return size * count
            }
            errorBuffer[0] = 0
            let code = netctl_curl_easy_perform(handle)
            if context.aborted { throw .aborted }
            guard code == CURLE_OK else {
                let detail = errorBuffer[0] != 0 ? String(cBuffer: errorBuffer) : String(cString: netctl_curl_easy_strerror(code))
                switch code {
                case CURLE_SSL_CONNECT_ERROR, CURLE_PEER_FAILED_VERIFICATION, CURLE_SSL_CACERT_BADFILE, CURLE_SSL_CERTPROBLEM:
                    throw .tls(detail)
                case CURLE_COULDNT_CONNECT, CURLE_COULDNT_RESOLVE_HOST, CURLE_OPERATION_TIMEDOUT, CURLE_RECV_ERROR, CURLE_SEND_ERROR,
                     CURLE_GOT_NOTHING:
                    throw .connect(detail)
                default:
                    throw .other(detail)
                }
            }
            return Response(status: context.status, headers: context.headers, errorBody: context.errorBody)
          }
        }
    }

    /// PEM trust anchors for this request (libcurl keeps its own copy).
    private func setAnchors(_ pem: [UInt8]) throws(Failure) {
        var copy = pem
        let accepted = copy.withUnsafeMutableBytes { raw -> Bool in
            var blob = curl_blob(data: raw.baseAddress, len: raw.count, flags: UInt32(CURL_BLOB_COPY))
            return netctl_curl_set_blob(handle, CURLOPT_CAINFO_BLOB, &blob) == CURLE_OK
        }
        guard accepted else { throw .other("libcurl refused the certificates") }
    }

    static let systemBundle = "/etc/ssl/certs/ca-certificates.crt"
    /// The system's anchors, one file per certificate with OpenSSL's hash links (Debian's ca-certificates).
    static let systemDirectory = "/etc/ssl/certs"
}

