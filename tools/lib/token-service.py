#!/usr/bin/env python3
"""A token service for tests: the registry's `token` auth, as Docker Hub's auth server does it.

    token-service.py DIR PORT USER PASSWORD

Serves GET /token over TLS (DIR/server.crt, DIR/server.key) on 127.0.0.1:PORT. A request with
the right Basic credentials gets a JWT (RS256, signed with DIR/token.key, its certificate in
the x5c header) granting what its `scope` asks; without credentials, an anonymous token that
grants nothing; with wrong ones, 401. The registry trusts DIR/token.crt (rootcertbundle).
Every request is logged to stdout as `token scope=... user=...`.
"""
import base64, json, os, ssl, subprocess, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

directory, port, user, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ISSUER, SERVICE = "netctl-test-issuer", "netctl-test-registry"


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def certificate_der():
    pem = open(os.path.join(directory, "token.crt")).read()
    body = "".join(line for line in pem.splitlines() if "CERTIFICATE" not in line)
    return base64.b64decode(body)


def sign(claims):
    header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(certificate_der()).decode()]}
    signing_input = (b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())).encode()
    signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", os.path.join(directory, "token.key")],
                               input=signing_input, capture_output=True, check=True).stdout
    return signing_input.decode() + "." + b64(signature)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        url = urlparse(self.path)
        query = parse_qs(url.query)
        who = None
        header = self.headers.get("Authorization", "")
        if header.startswith("Basic "):
            given = base64.b64decode(header[6:]).decode(errors="replace")
            if given != f"{user}:{password}":
                print(f"token refused user={given.split(':')[0]}", flush=True)
                self.send_response(401)
                self.end_headers()
                return
            who = user
        access = []
        for scope in query.get("scope", []):
            kind, name, actions = scope.split(":", 2) if scope.count(":") >= 2 else ("", "", "")
            if who and kind == "repository":
                access.append({"type": kind, "name": name, "actions": [a for a in actions.split(",") if a in ("pull", "push")]})
        now = int(time.time())
        claims = {"iss": ISSUER, "sub": who or "", "aud": query.get("service", [SERVICE])[0], "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": b64(os.urandom(12)), "access": access}
        body = json.dumps({"token": sign(claims), "expires_in": 300}).encode()
        print(f"token scope={','.join(query.get('scope', []))} user={who or '-'}", flush=True)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(os.path.join(directory, "server.crt"), os.path.join(directory, "server.key"))
server.socket = context.wrap_socket(server.socket, server_side=True)
print("serving", flush=True)
server.serve_forever()
