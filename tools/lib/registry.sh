#!/usr/bin/env bash
# A local registry for tests, benchmarks and the demo: Debian's docker-registry (the reference
# registry) with TLS from a CA made here and, optionally, htpasswd auth.
#   registry.sh prepare DIR [--port N] [--no-auth|--token PORT] [--no-tls]   CA, certificate, htpasswd, DIR/config.yml
#   registry.sh push DIR SOURCE NAME [--port N]                  skopeo copy of an OCI layout (SOURCE) as NAME
# The caller starts `docker-registry serve DIR/config.yml` itself (in its own sandbox) and stops it by PID.
# User netctl, password registry-secret. DIR/certs.d/127.0.0.1:PORT/ca.crt trusts the CA the
# way Podman and netctl read certs.d.
set -euo pipefail
command=$1 dir=$2
shift 2
port=5000 auth=1 tls=1 token=
case $command in
prepare)
    while (($#)); do
        case $1 in --port) port=$2; shift 2;; --no-auth) auth=0; shift;; --token) token=$2; shift 2;; --no-tls) tls=0; shift;; *) echo "unknown option $1" >&2; exit 2;; esac
    done
    mkdir -p "$dir/storage" "$dir/certs.d/127.0.0.1:$port" "$dir/certs.d/localhost:$port"
    if ((tls)); then
        openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=netctl test CA" \
            -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
        printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n' > "$dir/san.ext"
        openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial -days 2 \
            -extfile "$dir/san.ext" -out "$dir/server.crt" 2>/dev/null
        cp "$dir/ca.crt" "$dir/certs.d/127.0.0.1:$port/ca.crt"
        cp "$dir/ca.crt" "$dir/certs.d/localhost:$port/ca.crt"
    fi
    {
        echo "version: 0.1"
        echo "log: {level: warn, accesslog: {disabled: false}}"
        echo "storage: {filesystem: {rootdirectory: $dir/storage}, delete: {enabled: true}}"
        if ((tls)); then
            echo "http: {addr: 127.0.0.1:$port, tls: {certificate: $dir/server.crt, key: $dir/server.key}}"
        else
            echo "http: {addr: 127.0.0.1:$port}"
        fi
        if [ -n "$token" ]; then
            # Bearer tokens from tools/lib/token-service.py on 127.0.0.1:$token, signed with token.key.
            openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=netctl test token signer" \
                -keyout "$dir/token.key" -out "$dir/token.crt" 2>/dev/null
            echo "auth: {token: {realm: https://127.0.0.1:$token/token, service: netctl-test-registry, issuer: netctl-test-issuer, rootcertbundle: $dir/token.crt}}"
        elif ((auth)); then
            htpasswd -Bbn netctl registry-secret > "$dir/htpasswd"
            echo "auth: {htpasswd: {realm: netctl-test, path: $dir/htpasswd}}"
        fi
    } > "$dir/config.yml"
    ;;
push)
    source=$1 name=$2
    shift 2
    while (($#)); do case $1 in --port) port=$2; shift 2;; *) echo "unknown option $1" >&2; exit 2;; esac; done
    args=(--dest-cert-dir "$dir/certs.d/127.0.0.1:$port")
    [ -f "$dir/ca.crt" ] || args=(--dest-tls-verify=false)
    if [ -f "$dir/htpasswd" ] || [ -f "$dir/token.key" ]; then args+=(--dest-creds netctl:registry-secret); fi
    skopeo copy -q --retry-times 3 "${args[@]}" "oci:$source" "docker://127.0.0.1:$port/$name"
    ;;
*) echo "usage: registry.sh prepare|push ..." >&2; exit 2;;
esac
