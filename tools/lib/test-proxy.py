#!/usr/bin/env python3
"""A plain-HTTP proxy in front of a test registry, for tests that need a registry misbehaving.

    test-proxy.py PORT UPSTREAM CA_FILE [--rate BYTES_PER_SECOND] [--flip]

Forwards every request on 127.0.0.1:PORT to UPSTREAM (https://127.0.0.1:5000, trusted with
CA_FILE), headers that matter to the protocol included (Authorization, Accept, Range and the
answers' WWW-Authenticate, Content-Range, Docker-Content-Digest). Blob bodies can be slowed
to a rate (so a test can kill a pull half-way) or, for blobs over 64 KiB (layers, not
configurations), have one byte in the middle flipped (a damaged blob, same size). Each request is logged to stdout: `GET PATH range=... -> STATUS`.
"""
import http.client, ssl, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

port, upstream, ca = int(sys.argv[1]), urlparse(sys.argv[2]), sys.argv[3]
rate = int(sys.argv[sys.argv.index("--rate") + 1]) if "--rate" in sys.argv else 0
flip = "--flip" in sys.argv
context = ssl.create_default_context(cafile=ca)
FORWARD = ("authorization", "accept", "range", "user-agent")
RETURN = ("content-type", "content-length", "content-range", "docker-content-digest", "www-authenticate",
          "docker-distribution-api-version", "accept-ranges", "location")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def relay(self, body):
        connection = http.client.HTTPSConnection(upstream.hostname, upstream.port, context=context, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() in FORWARD}
        connection.request(self.command, self.path, headers=headers)
        answer = connection.getresponse()
        print(f"{self.command} {self.path} range={self.headers.get('Range', '-')} -> {answer.status}", flush=True)
        self.send_response(answer.status)
        for name, value in answer.getheaders():
            if name.lower() in RETURN:
                self.send_header(name, value)
        self.end_headers()
        if not body:
            connection.close()
            return
        length = int(answer.getheader("Content-Length") or 0)
        blob = "/blobs/" in self.path and answer.status in (200, 206)
        sent, start = 0, time.monotonic()
        while True:
            chunk = answer.read(16384)
            if not chunk:
                break
            if blob and flip and length > 65536 and sent <= length // 2 < sent + len(chunk):
                i = length // 2 - sent
                chunk = chunk[:i] + bytes([chunk[i] ^ 0xFF]) + chunk[i + 1:]
            self.wfile.write(chunk)
            sent += len(chunk)
            if blob and rate:
                ahead = sent / rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
        connection.close()

    def do_GET(self):
        self.relay(True)

    def do_HEAD(self):
        self.relay(False)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
server.daemon_threads = True
print("serving", flush=True)
server.serve_forever()
