# shellcheck shell=bash
# tools/lib/peers.sh: start and stop the "peer" forwarders that benchmarks compare
# netctl's proxy against. Source it; it sets no shell options and is `set -euo pipefail` safe.
#
#   source "$REPO/tools/lib/peers.sh"
#   peers_install                       # root: apt-get the peers and load tools, extract
#                                       #   docker-proxy from docker.io (idempotent, quick when done)
#   peer_available NAME [tcp|udp]       # 0 if NAME can run here (for that protocol)
#   pid=$(peer_start NAME LISTEN_IP LISTEN_PORT BACKEND_IP BACKEND_PORT [tcp|udp])
#                                       # starts NAME in the current network namespace, prints its
#                                       #   PID once the port is bound (waits up to 5 s), else fails
#   peer_rss_kb PID                     # VmRSS of PID and its descendants, in KB (peer_pss_kb: Pss)
#   peer_stop PID                       # TERM, KILL after a bounded wait; removes its temp files
#   peer_version NAME                   # one line naming the version
#   peers_stop_all                      # stops every peer this run directory still lists
#
# NAME is one of (PEERS_NAMES):
#   docker-proxy  Docker's userland proxy, taken from Debian's docker.io package without the
#                 daemon: -proto tcp|udp -host-ip -host-port -container-ip -container-port.
#                 The 20.10 binary writes its readiness ("0\n" or "1\n<error>") to fd 3 and then
#                 closes fd 3: started without fd 3 open it closes its own listening socket, so
#                 peer_start always hands it fd 3 (a file in the peer's temp dir).
#   haproxy       mode tcp, option splice-auto (NETCTL_PEERS_HAPROXY_SPLICE=auto|always|off),
#                 foreground (-db). TCP only: HAProxy does not forward UDP.
#   nginx-stream  nginx stream module (load_module'ed when built dynamic, as on Debian),
#                 daemon off, pid/lock/error log under its temp dir. TCP and UDP.
#   socat         TCP-LISTEN,fork,reuseaddr -> TCP (UDP-LISTEN,fork -> UDP), backlog=somaxconn
#                 (socat's default is 5) and nodelay, as the others have.
#
# Addresses may be IPv4 or IPv6 (no brackets). Knobs (environment):
#   NETCTL_PEERS_CACHE          where docker-proxy is kept   (/var/cache/netctl-peers)
#   NETCTL_PEERS_RUN            per-peer temp dirs + index   (${TMPDIR:-/tmp}/netctl-peers)
#   NETCTL_PEERS_WORKERS        nginx worker_processes / haproxy nbthread / docker-proxy
#                               GOMAXPROCS; unset = each peer uses every core
#   NETCTL_PEERS_MAXCONN        haproxy maxconn, nginx worker_connections/2
#                               (default: what the open-files hard limit allows, <= 65536)
#   NETCTL_PEERS_START_TIMEOUT  seconds peer_start waits for the listener (5)
#   NETCTL_PEERS_STOP_TIMEOUT   seconds peer_stop waits after TERM before KILL (3)
# A peer's stdout/stderr go to log in its temp dir; peer_start prints the tail when it fails.

PEERS_NAMES="docker-proxy haproxy nginx-stream socat"

_peers_log() { printf 'peers: %s\n' "$*" >&2; }
_peers_cache() { printf '%s' "${NETCTL_PEERS_CACHE:-/var/cache/netctl-peers}"; }
_peers_run() { printf '%s' "${NETCTL_PEERS_RUN:-${TMPDIR:-/tmp}/netctl-peers}"; }
_peers_is_uint() { [[ ${1:-} =~ ^[0-9]+$ ]]; }
_peers_is_v6() { [[ $1 == *:* ]]; }
_peers_is_ip() { # literal IPv4 or IPv6 address (names are not resolved the same way by every peer)
    [[ $1 =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ || ( $1 == *:* && $1 =~ ^[0-9A-Fa-f:.]+$ ) ]]
}
# host:port as nginx/haproxy/socat write it
_peers_hostport() { if _peers_is_v6 "$1"; then printf '[%s]:%s' "$1" "$2"; else printf '%s:%s' "$1" "$2"; fi; }

# ---------------------------------------------------------------- locating the peers

_peers_docker_proxy_bin() {
    local c
    for c in "${NETCTL_DOCKER_PROXY:-}" "$(_peers_cache)/bin/docker-proxy" \
             "$(command -v docker-proxy 2>/dev/null || true)" \
             /usr/libexec/docker/docker-proxy /usr/sbin/docker-proxy /usr/bin/docker-proxy; do
        if [[ -n $c && -f $c && -x $c ]]; then printf '%s\n' "$c"; return 0; fi
    done
    return 1
}

# Prints the load_module line nginx needs for the stream module ("" when built in);
# fails when nginx has no stream module at all.
_peers_nginx_stream_load() {
    command -v nginx >/dev/null 2>&1 || return 1
    local v modpath=/usr/lib/nginx/modules
    v=$(nginx -V 2>&1) || return 1
    if [[ $v =~ --modules-path=([^[:space:]]+) ]]; then modpath=${BASH_REMATCH[1]}; fi
    if [[ $v == *"--with-stream "* || $v == *"--with-stream" ]]; then
        printf '\n'; return 0
    fi
    if [[ -f $modpath/ngx_stream_module.so ]]; then
        printf 'load_module %s/ngx_stream_module.so;\n' "$modpath"; return 0
    fi
    return 1
}

peer_supports_udp() {
    case ${1:-} in
        docker-proxy|nginx-stream|socat) return 0 ;;
        *) return 1 ;;
    esac
}

peer_available() {
    local name=${1:-} proto=${2:-tcp}
    if [[ $proto == udp ]] && ! peer_supports_udp "$name"; then return 1; fi
    case $name in
        docker-proxy) _peers_docker_proxy_bin >/dev/null ;;
        haproxy) command -v haproxy >/dev/null 2>&1 ;;
        nginx-stream) _peers_nginx_stream_load >/dev/null ;;
        socat) command -v socat >/dev/null 2>&1 ;;
        *) return 1 ;;
    esac
}

peer_version() {
    local name=${1:-} bin v
    case $name in
        docker-proxy)
            bin=$(_peers_docker_proxy_bin) || return 1
            if [[ -f $(_peers_cache)/docker-proxy.version && $bin == "$(_peers_cache)/bin/docker-proxy" ]]; then
                printf 'docker-proxy (docker.io %s)\n' "$(<"$(_peers_cache)/docker-proxy.version")"
            else
                printf 'docker-proxy (%s)\n' "$bin"
            fi ;;
        haproxy) v=$(haproxy -v 2>/dev/null) || return 1; printf '%s\n' "${v%%$'\n'*}" ;;
        nginx-stream) v=$(nginx -v 2>&1) || return 1; printf '%s\n' "${v%%$'\n'*}" ;;
        socat) v=$(socat -V 2>/dev/null) || return 1; v=${v#*socat version }; printf 'socat %s\n' "${v%%$'\n'*}" ;;
        *) return 1 ;;
    esac
}

# ---------------------------------------------------------------- installing

_peers_pkg_installed() {
    [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]
}

peers_install() {
    local -a want=()
    command -v haproxy >/dev/null 2>&1 || want+=(haproxy)
    command -v nginx >/dev/null 2>&1 || want+=(nginx)
    if ! _peers_nginx_stream_load >/dev/null 2>&1 && ! _peers_pkg_installed libnginx-mod-stream; then
        want+=(libnginx-mod-stream)
    fi
    command -v socat >/dev/null 2>&1 || want+=(socat)
    command -v iperf3 >/dev/null 2>&1 || want+=(iperf3)
    command -v wrk >/dev/null 2>&1 || want+=(wrk)
    # The name servers' peers and load (tools/bench-dns).
    command -v dnsperf >/dev/null 2>&1 || want+=(dnsperf)
    [[ -x /usr/lib/podman/aardvark-dns ]] || want+=(aardvark-dns)
    command -v dnsmasq >/dev/null 2>&1 || want+=(dnsmasq-base)
    command -v dig >/dev/null 2>&1 || want+=(bind9-dnsutils)

    if ((${#want[@]} > 0)); then
        if [[ $(id -u) != 0 ]]; then _peers_log "need root to install: ${want[*]}"; return 1; fi
        _peers_log "installing: ${want[*]}"
        # Keep the packages' services (nginx on :80, haproxy) from being started by postinst.
        local guard=""
        if [[ ! -e /usr/sbin/policy-rc.d ]]; then
            guard=/usr/sbin/policy-rc.d
            printf '#!/bin/sh\nexit 101\n' >"$guard" && chmod 755 "$guard"
        fi
        local log rc=0
        log=$(mktemp "${TMPDIR:-/tmp}/netctl-peers-apt.XXXXXX")
        if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${want[@]}" >"$log" 2>&1; then
            _peers_log "apt-get install failed; running apt-get update and retrying"
            DEBIAN_FRONTEND=noninteractive apt-get update >>"$log" 2>&1 || true
            DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${want[@]}" >>"$log" 2>&1 || rc=$?
        fi
        if [[ -n $guard ]]; then rm -f "$guard"; fi
        if ((rc != 0)); then tail -n 15 "$log" >&2; rm -f "$log"; _peers_log "install failed"; return 1; fi
        rm -f "$log"
        if ! _peers_nginx_stream_load >/dev/null; then _peers_log "nginx has no stream module after install"; return 1; fi
    fi

    local cache; cache=$(_peers_cache)
    if [[ ! -x $cache/bin/docker-proxy ]]; then
        if [[ $(id -u) != 0 ]]; then _peers_log "need root to fetch docker.io"; return 1; fi
        _peers_log "extracting docker-proxy from Debian's docker.io into $cache (no daemon installed)"
        local tmp deb found
        tmp=$(mktemp -d "${TMPDIR:-/tmp}/netctl-peers-dl.XXXXXX")
        chmod 755 "$tmp"
        if ! (cd "$tmp" && apt-get download docker.io >"$tmp/log" 2>&1) \
           && ! { DEBIAN_FRONTEND=noninteractive apt-get update >>"$tmp/log" 2>&1 \
                  && (cd "$tmp" && apt-get download docker.io >>"$tmp/log" 2>&1); }; then
            tail -n 5 "$tmp/log" >&2; rm -rf "$tmp"; _peers_log "apt-get download docker.io failed"; return 1
        fi
        deb=$(find "$tmp" -maxdepth 1 -name 'docker.io_*.deb' -print -quit)
        if [[ -z $deb ]] || ! dpkg -x "$deb" "$tmp/x"; then
            rm -rf "$tmp"; _peers_log "could not unpack docker.io"; return 1
        fi
        found=$(find "$tmp/x" -type f -name docker-proxy -perm -u+x -print -quit)
        if [[ -z $found ]]; then rm -rf "$tmp"; _peers_log "docker.io has no docker-proxy binary"; return 1; fi
        mkdir -p "$cache/bin"
        install -m 755 "$found" "$cache/bin/docker-proxy.new" && mv -f "$cache/bin/docker-proxy.new" "$cache/bin/docker-proxy"
        dpkg-deb -f "$deb" Version >"$cache/docker-proxy.version"
        _peers_log "docker-proxy ${found#"$tmp/x"} (docker.io $(<"$cache/docker-proxy.version")) -> $cache/bin/docker-proxy"
        rm -rf "$tmp"
    fi
    return 0
}

# ---------------------------------------------------------------- process helpers

# Fields of /proc/PID/stat after the command name: state is $1, ppid $2, starttime $20.
# Builtins only (no fork per process): peer_rss_kb may be sampled often.
_peers_stat() {
    local s=""
    { read -r s <"/proc/$1/stat"; } 2>/dev/null || [[ -n $s ]] || return 1
    [[ -n $s ]] || return 1
    printf '%s\n' "${s##*) }"
}

_peers_alive() {
    local s="" st
    { read -r s <"/proc/$1/stat"; } 2>/dev/null || [[ -n $s ]] || return 1
    s=${s##*) }; st=${s%% *}
    [[ -n $st && $st != Z && $st != X ]]
}

_peers_starttime() {
    local -a f=()
    read -r -a f <<<"$(_peers_stat "$1")"
    ((${#f[@]} > 19)) || return 1
    printf '%s\n' "${f[19]}"
}

# All descendants of $1 (not $1), from the ppid of every /proc entry.
_peers_descendants() {
    local root=$1 d p s pp
    local -A kids=()
    for d in /proc/[0-9]*; do
        p=${d#/proc/}
        s=""
        { read -r s <"$d/stat"; } 2>/dev/null || [[ -n $s ]] || continue
        s=${s##*) }; s=${s#* }; pp=${s%% *}
        kids[$pp]+="$p "
    done
    local -a queue=("$root") out=()
    while ((${#queue[@]} > 0)); do
        p=${queue[0]}; queue=("${queue[@]:1}")
        for d in ${kids[$p]:-}; do out+=("$d"); queue+=("$d"); done
    done
    if ((${#out[@]} > 0)); then printf '%s\n' "${out[@]}"; fi
}

_peers_field_kb() { # FILE FIELD: the number after "FIELD:" in FILE, or nothing
    local k v rest
    while read -r k v rest; do
        if [[ $k == "$2:" ]]; then printf '%s\n' "$v"; return 0; fi
    done <"$1" 2>/dev/null
    return 0
}

_peers_sum() { # FILE FIELD PID: FIELD (kB) of /proc/P/FILE summed over PID and its descendants
    local file=$1 field=$2 pid=$3 total=0 p v
    _peers_is_uint "$pid" || return 1
    _peers_alive "$pid" || return 1
    for p in "$pid" $(_peers_descendants "$pid"); do
        v=$(_peers_field_kb "/proc/$p/$file" "$field" 2>/dev/null) || v=""
        if _peers_is_uint "$v"; then total=$((total + v)); fi
    done
    printf '%s\n' "$total"
}

peer_rss_kb() { _peers_sum status VmRSS "${1:-}"; }

# Pss counts pages shared between nginx's master and workers (or socat's forks) once.
peer_pss_kb() { _peers_sum smaps_rollup Pss "${1:-}"; }

# 0 once PID (or, for nginx, its master = PID) has a listening socket on PORT.
_peers_listening() {
    local pid=$1 proto=$2 ip=$3 port=$4
    if command -v ss >/dev/null 2>&1; then
        local flag=-t
        [[ $proto == udp ]] && flag=-u
        local out
        out=$(ss -Hlnp "$flag" "sport = :$port" 2>/dev/null) || return 1
        [[ $out == *"pid=$pid,"* ]]
        return
    fi
    # Without ss: a TCP connect (opens one backend connection); UDP cannot be probed.
    [[ $proto == udp ]] && { sleep 0.5; return 0; }
    case $ip in 0.0.0.0) ip=127.0.0.1 ;; ::) ip=::1 ;; esac
    # shellcheck disable=SC2016 # expanded by the inner bash
    timeout 1 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$ip" "$port" 2>/dev/null
}

_peers_max_fds() {
    local h; h=$(ulimit -Hn)
    [[ $h == unlimited ]] && h=1048576
    printf '%s\n' "$h"
}

# Connections each peer is sized for: a proxied connection takes two sockets, and HAProxy
# also keeps maxconn/4 splice pipes (two fds each), so 3 fds per connection fit all of them.
_peers_maxconn() {
    if _peers_is_uint "${NETCTL_PEERS_MAXCONN:-}"; then printf '%s\n' "$NETCTL_PEERS_MAXCONN"; return; fi
    local m=$((($(_peers_max_fds) - 256) / 3))
    ((m > 65536)) && m=65536
    ((m < 256)) && m=256
    printf '%s\n' "$m"
}

# ---------------------------------------------------------------- configs

_peers_haproxy_cfg() { # DIR LIP LPORT BIP BPORT
    local maxconn splice
    maxconn=$(_peers_maxconn)
    case ${NETCTL_PEERS_HAPROXY_SPLICE:-auto} in
        auto) splice="    option splice-auto" ;;
        always) splice=$'    option splice-request\n    option splice-response' ;;
        off) splice="    # splicing off" ;;
        *) _peers_log "NETCTL_PEERS_HAPROXY_SPLICE must be auto, always or off"; return 1 ;;
    esac
    {
        printf 'global\n    maxconn %s\n' "$maxconn"
        if _peers_is_uint "${NETCTL_PEERS_WORKERS:-}"; then printf '    nbthread %s\n' "$NETCTL_PEERS_WORKERS"; fi
        printf 'defaults\n    mode tcp\n    maxconn %s\n' "$maxconn"
        printf '    timeout connect 5s\n    timeout client 10m\n    timeout server 10m\n'
        printf '%s\n' "$splice"
        printf 'listen peer\n    bind %s\n    server backend %s\n' \
            "$(_peers_hostport "$2" "$3")" "$(_peers_hostport "$4" "$5")"
    } >"$1/haproxy.cfg"
}

_peers_nginx_conf() { # DIR LIP LPORT BIP BPORT PROTO
    local load maxconn workers=auto udp="" timeout=10m
    load=$(_peers_nginx_stream_load) || { _peers_log "nginx has no stream module"; return 1; }
    maxconn=$(_peers_maxconn)
    if _peers_is_uint "${NETCTL_PEERS_WORKERS:-}"; then workers=$NETCTL_PEERS_WORKERS; fi
    # proxy_half_close (nginx >= 1.21.4): pass the client's FIN on and keep reading the
    # backend, as the other peers do; by default nginx drops both directions on the first FIN.
    local half="proxy_half_close on;" nv
    nv=$(nginx -v 2>&1); nv=${nv##*nginx/}; nv=${nv%% *}
    if [[ $(printf '%s\n1.21.4\n' "$nv" | sort -V | head -n1) != 1.21.4 ]]; then half=""; fi
    if [[ $6 == udp ]]; then udp=" udp"; timeout=60s; half=""; fi
    mkdir -p "$1/logs"
    cat >"$1/nginx.conf" <<EOF
$load
daemon off;
master_process on;
worker_processes $workers;
worker_rlimit_nofile $(_peers_max_fds);
pid $1/nginx.pid;
lock_file $1/nginx.lock;
error_log $1/error.log warn;
events {
    worker_connections $((maxconn * 2));
}
stream {
    server {
        listen $(_peers_hostport "$2" "$3")$udp;
        proxy_pass $(_peers_hostport "$4" "$5");
        proxy_connect_timeout 5s;
        proxy_timeout $timeout;
        $half
    }
}
EOF
}

# ---------------------------------------------------------------- start / stop

peer_start() {
    if (($# < 5)); then
        _peers_log "usage: peer_start NAME LISTEN_IP LISTEN_PORT BACKEND_IP BACKEND_PORT [tcp|udp]"; return 2
    fi
    local name=$1 lip=$2 lport=$3 bip=$4 bport=$5 proto=${6:-tcp}
    if [[ $proto != tcp && $proto != udp ]]; then _peers_log "protocol must be tcp or udp, not $proto"; return 2; fi
    if ! _peers_is_uint "$lport" || ! _peers_is_uint "$bport"; then _peers_log "ports must be numbers"; return 2; fi
    if ! _peers_is_ip "$lip" || ! _peers_is_ip "$bip"; then _peers_log "addresses must be literal IPv4/IPv6 (got $lip, $bip)"; return 2; fi
    if [[ " $PEERS_NAMES " != *" $name "* ]]; then _peers_log "unknown peer '$name' (one of: $PEERS_NAMES)"; return 2; fi
    if [[ $proto == udp ]] && ! peer_supports_udp "$name"; then _peers_log "$name does not forward UDP"; return 1; fi
    if ! peer_available "$name" "$proto"; then _peers_log "$name is not available here (run peers_install)"; return 1; fi

    local run dir
    run=$(_peers_run)
    mkdir -p "$run" && chmod 700 "$run" || return 1
    dir=$(mktemp -d "$run/$name-$proto.XXXXXX") || return 1

    local -a cmd=() envs=()
    local v6=4
    _peers_is_v6 "$lip" && v6=6
    case $name in
        docker-proxy)
            cmd=("$(_peers_docker_proxy_bin)" -proto "$proto" -host-ip "$lip" -host-port "$lport"
                 -container-ip "$bip" -container-port "$bport")
            if _peers_is_uint "${NETCTL_PEERS_WORKERS:-}"; then envs=("GOMAXPROCS=$NETCTL_PEERS_WORKERS"); fi ;;
        haproxy)
            _peers_haproxy_cfg "$dir" "$lip" "$lport" "$bip" "$bport" || { rm -rf "$dir"; return 1; }
            cmd=(haproxy -db -f "$dir/haproxy.cfg") ;;
        nginx-stream)
            _peers_nginx_conf "$dir" "$lip" "$lport" "$bip" "$bport" "$proto" || { rm -rf "$dir"; return 1; }
            cmd=(nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf") ;;
        socat)
            local bv6=4
            _peers_is_v6 "$bip" && bv6=6
            local bind=$lip
            _peers_is_v6 "$lip" && bind="[$lip]"
            if [[ $proto == tcp ]]; then
                cmd=(socat "TCP$v6-LISTEN:$lport,bind=$bind,fork,reuseaddr,backlog=$(cat /proc/sys/net/core/somaxconn 2>/dev/null || echo 4096),nodelay"
                     "TCP$bv6:$(_peers_hostport "$bip" "$bport"),nodelay")
            else
                cmd=(socat "UDP$v6-LISTEN:$lport,bind=$bind,fork,reuseaddr" "UDP$bv6:$(_peers_hostport "$bip" "$bport")")
            fi ;;
    esac
    printf '%s\n' "${cmd[*]}" >"$dir/cmd"

    # stdout/stderr to a file so that `pid=$(peer_start ...)` returns; fd 3 is docker-proxy's
    # readiness pipe (it must be open, see the header).
    local pid
    env "${envs[@]}" "${cmd[@]}" </dev/null >"$dir/log" 2>&1 3>"$dir/ready" &
    pid=$!
    printf '%s\n' "$pid" >"$dir/pid"
    _peers_starttime "$pid" >"$dir/starttime" 2>/dev/null || true
    ln -sfn "$dir" "$run/pid.$pid"

    local limit=${NETCTL_PEERS_START_TIMEOUT:-5} start=$SECONDS ok=""
    while ((SECONDS - start <= limit)); do
        if ! _peers_alive "$pid"; then break; fi
        if [[ $name == docker-proxy && -s $dir/ready && $(head -c1 "$dir/ready") == 1 ]]; then break; fi
        if _peers_listening "$pid" "$proto" "$lip" "$lport"; then ok=1; break; fi
        sleep 0.05
    done
    if [[ -z $ok ]]; then
        if _peers_alive "$pid"; then
            _peers_log "$name did not listen on $proto $(_peers_hostport "$lip" "$lport") within ${limit}s"
        else
            _peers_log "$name exited before listening on $proto $(_peers_hostport "$lip" "$lport")"
        fi
        _peers_log "command: $(<"$dir/cmd")"
        { tail -n 8 "$dir/log"; [[ -f $dir/error.log ]] && tail -n 8 "$dir/error.log"; tail -n 3 "$dir/ready"; } 2>/dev/null | sed 's/^/    /' >&2
        peer_stop "$pid" >/dev/null 2>&1
        return 1
    fi
    printf '%s\n' "$pid"
}

peer_stop() {
    local pid=${1:-}
    if ! _peers_is_uint "$pid"; then _peers_log "usage: peer_stop PID"; return 2; fi
    local run link dir
    run=$(_peers_run)
    link="$run/pid.$pid"
    if [[ ! -L $link ]]; then _peers_log "PID $pid was not started by peer_start (no $link)"; return 1; fi
    dir=$(readlink "$link")

    # Only signal the process peer_start started: the PID must still have its start time.
    local mine="" st
    if _peers_alive "$pid"; then
        st=$(_peers_starttime "$pid" 2>/dev/null || true)
        if [[ -n $st && $st == "$(cat "$dir/starttime" 2>/dev/null)" ]]; then mine=1; fi
    fi
    if [[ -n $mine ]]; then
        local -a kids=()
        mapfile -t kids < <(_peers_descendants "$pid")
        kill -TERM "$pid" 2>/dev/null || true
        local limit=${NETCTL_PEERS_STOP_TIMEOUT:-3} i
        for ((i = 0; i < limit * 20; i++)); do
            _peers_alive "$pid" || break
            sleep 0.05
        done
        if _peers_alive "$pid"; then
            _peers_log "PID $pid ignored TERM for ${limit}s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        # Children left behind (socat's per-connection forks, nginx workers after a KILL).
        local k alive=()
        for k in "${kids[@]}"; do if _peers_alive "$k"; then alive+=("$k"); kill -TERM "$k" 2>/dev/null || true; fi; done
        if ((${#alive[@]} > 0)); then
            sleep 0.2
            for k in "${alive[@]}"; do _peers_alive "$k" && kill -KILL "$k" 2>/dev/null; done
        fi
        for ((i = 0; i < 40; i++)); do _peers_alive "$pid" || break; sleep 0.05; done
    fi
    # Reap it when it is our own child (never wait on one still running).
    if ! _peers_alive "$pid"; then wait "$pid" 2>/dev/null || true; fi
    if [[ -n $dir && $dir == "$run"/* ]]; then rm -rf -- "$dir"; fi
    rm -f -- "$link"
    rmdir -- "$run" 2>/dev/null || true
    return 0
}

peers_stop_all() {
    local run l
    run=$(_peers_run)
    [[ -d $run ]] || return 0
    for l in "$run"/pid.*; do
        [[ -L $l ]] || continue
        peer_stop "${l##*/pid.}" || true
    done
}
