# shellcheck shell=bash
# tools/lib/bench-env.sh: the test bed of the throughput benchmarks (bench-throughput,
# bench-ab). Source it inside the private network + mount namespace the tool re-executed
# itself in; every object it makes lives there and vanishes with it.
#
#   bench_container NETCTL WORK SERVER_IP   # netctl network "bench" (10.99.0.0/24) with a
#                                           #   container "srv" at SERVER_IP running nginx
#                                           #   (answers "hello" on :80); sets srvns (its netns
#                                           #   path) and bench_pids (what to stop)
#   bench_client HOST_IP CLIENT_IP          # a namespace "client" behind a veth pair, routed
#                                           #   through this one (its default route is HOST_IP)
#   bench_serve_proxy BIN PORT LOG [ARG...] # (re)starts `BIN proxy serve ARG...` (stderr appended
#                                           #   to LOG), waits up to 5 s for it to listen on
#                                           #   PORT, else prints LOG and fails; its PID is in
#                                           #   bench_proxy_pid
#   bench_stop_proxy                        # stops that proxy, if it runs
#   cpu_ticks                               # the whole machine's CPU ticks: user (incl. nice),
#                                           #   system, softirq + irq, and all (user to steal)
#   set_cc [COMMAND...]                     # makes $cc (if set) the default congestion control
#                                           #   of the namespace COMMAND runs in
# Callers set NETCTL_STATE_DIR first and keep /run/netns a tmpfs of their own.

bench_pids=()

set_cc() {
    [[ -z ${cc:-} ]] || "$@" sysctl -qw net.ipv4.tcp_congestion_control="$cc" ||
        { echo "${0##*/}: can't make $cc the default (allowed: $(cat /proc/sys/net/ipv4/tcp_allowed_congestion_control))" >&2; exit 1; }
}

bench_container() {
    # (Locals named apart from the callers' globals, some of which are readonly.)
    local bin=$1 dir=$2 address=$3
    "$bin" network create bench --subnet 10.99.0.0/24 >/dev/null
    "$bin" attach bench --new srv --name srv --ip "$address" >/dev/null
    srvns="$NETCTL_STATE_DIR/netns/srv"
    # nginx closes first (Connection: close), so the server would hold a TIME_WAIT per
    # connection. The direct and nft paths reach it with the same tuple (DNAT keeps the
    # client's address), so one path's TIME_WAITs would stall the other's reused ports for a
    # second. No TIME_WAIT in the server's namespace, for every path alike.
    nsenter --net="$srvns" sysctl -qw net.ipv4.tcp_max_tw_buckets=0
    set_cc nsenter --net="$srvns"
    mkdir -p "$dir/nginx"
    cat > "$dir/nginx/nginx.conf" <<EOF
worker_processes auto;
daemon off;
pid $dir/nginx/nginx.pid;
error_log $dir/nginx/error.log;
events { worker_connections 8192; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path $dir/nginx/body;
    proxy_temp_path $dir/nginx/proxy;
    fastcgi_temp_path $dir/nginx/fastcgi;
    uwsgi_temp_path $dir/nginx/uwsgi;
    scgi_temp_path $dir/nginx/scgi;
    server { listen 80 backlog=4096; location / { return 200 "hello\n"; } }
}
EOF
    nsenter --net="$srvns" nginx -p "$dir/nginx" -c "$dir/nginx/nginx.conf" >/dev/null 2>&1 & bench_pids+=($!)
}

bench_client() {
    local gateway=$1 address=$2
    ip netns add client
    ip link add uplink0 type veth peer name eth0 netns client
    ip addr add "$gateway/24" dev uplink0 && ip link set uplink0 up
    ip -n client link set lo up && ip -n client link set eth0 up
    ip -n client addr add "$address/24" dev eth0 && ip -n client route add default via "$gateway"
    ip netns exec client sysctl -qw net.ipv4.tcp_tw_reuse=1 net.ipv4.ip_local_port_range="1024 65000"
    set_cc ip netns exec client
}

bench_proxy_pid=""

bench_serve_proxy() {
    local bin=$1 port=$2 log=$3
    shift 3
    bench_stop_proxy
    "$bin" proxy serve "$@" 2>>"$log" & bench_proxy_pid=$!
    for _ in $(seq 50); do ss -ltn "sport = :$port" | grep -q LISTEN && return 0; sleep 0.1; done
    echo "${0##*/}: netctl proxy serve did not start; its log:" >&2; cat "$log" >&2; return 1
}

bench_stop_proxy() {
    if [[ -n $bench_proxy_pid ]]; then kill "$bench_proxy_pid" 2>/dev/null || true; wait "$bench_proxy_pid" 2>/dev/null || true; fi
    bench_proxy_pid=""
}

cpu_ticks() { awk '/^cpu / { t = 0; for (i = 2; i <= 9; i++) t += $i; print $2 + $3, $4, $7 + $8, t }' /proc/stat; }
