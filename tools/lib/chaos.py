#!/usr/bin/env python3
"""netctl's chaos suite, run by tools/chaos inside a private network + mount namespace.

Sections (each prints one row of the final table):
  kill     kill -9 at a random point in mutating commands, then `gc` and a leak check
  burst    81 concurrent `attach -p` on a /26: exactly 61 must succeed
  flush    `nft flush ruleset` under traffic: repair latency, loopback probes, transfers
  state    emptied, rolled-back and damaged state.db: gc refuses, the kernel is unchanged
  proxy    connect+reset and idle floods: the proxy's descriptors back to baseline
Every load loop is bounded in count and time; every process started here is stopped by PID.
"""
import argparse
import ctypes
import json
import os
import random
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NETCTL = os.environ.get("NETCTL_BIN", os.path.join(ROOT, ".build/debug/netctl"))
IMAGE = os.path.join(ROOT, "examples/101-tutorial/image")
LIBC = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


class Chaos:
    def __init__(self, quick):
        self.quick = quick
        self.state = tempfile.mkdtemp(prefix="netctl-chaos-")
        self.env = dict(os.environ, NETCTL_STATE_DIR=self.state, NETCTL_AGENT="off")
        self.started = []  # Popen objects we started (stopped by PID at the end)
        self.rows = []

    # MARK: helpers

    def netctl(self, *args, timeout=60, agent=False, check=False):
        env = dict(self.env)
        if agent:
            env.pop("NETCTL_AGENT")
        r = subprocess.run([NETCTL, *args], env=env, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"netctl {' '.join(args)}: {r.stderr.strip()}")
        return r

    def json_of(self, *args):
        return json.loads(self.netctl(*args, "--json", check=True).stdout or "[]")

    def start(self, argv, **kw):
        # A session of its own: what it forks (socat's children) goes with it.
        p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, **kw)
        self.started.append(p)
        return p

    def stop_all(self):
        for p in self.started:
            try:
                os.killpg(p.pid, signal.SIGKILL)  # the group this run started, by its leader's PID
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.started = []

    def in_namespace(self, path, make):
        """Runs `make` on a thread that entered the network namespace at `path` (setns is per
        thread), returning its result: sockets keep the namespace they were made in."""
        box = {}

        def body():
            fd = os.open(path, os.O_RDONLY)
            try:
                if LIBC.setns(fd, CLONE_NEWNET) != 0:
                    box["error"] = OSError(ctypes.get_errno(), "setns " + path)
                    return
                box["value"] = make()
            except Exception as e:  # returned to the caller
                box["error"] = e
            finally:
                os.close(fd)
        t = threading.Thread(target=body)
        t.start()
        t.join()
        if "error" in box:
            raise box["error"]
        return box["value"]

    def links(self):
        out = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True, check=True).stdout
        return {l["ifname"]: l for l in json.loads(out)}

    def nft_table(self):
        r = subprocess.run(["nft", "-j", "list", "table", "inet", "netctl"], capture_output=True, text=True)
        if r.returncode != 0:
            if "No such file or directory" in r.stderr:
                return []
            raise RuntimeError("nft list: " + r.stderr.strip())
        return json.loads(r.stdout)["nftables"]

    def map_elements(self):
        """(map name, key) for every element of netctl's maps."""
        found = []
        for item in self.nft_table():
            m = item.get("map")
            if m:
                for element in m.get("elem", []):
                    key = element[0]
                    key = tuple(key["concat"]) if isinstance(key, dict) else (key,)
                    found.append((m["name"], key))
        return found

    def own_processes(self):
        """PIDs of processes (other than ours) carrying this run's state directory."""
        mine = f"NETCTL_STATE_DIR={self.state}".encode()
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if mine in f.read().split(b"\0"):
                        with open(f"/proc/{entry}/stat") as s:
                            if s.read().split(") ")[-1].split()[0] != "Z":
                                pids.append(int(entry))
            except OSError:
                pass
        return pids

    def leaks(self):
        """What the kernel, the state directory and the process table hold that state does
        not account for (and what state claims the kernel lacks)."""
        problems = []
        endpoints = self.json_of("endpoints")
        networks = self.json_of("network", "ls")
        ports = self.json_of("port", "ls")
        links = self.links()
        for e in endpoints:
            if e["state"] != "active":
                problems.append(f"endpoint {e['name']} is {e['state']}")
            if e["hostInterface"] not in links:
                problems.append(f"endpoint {e['name']} lacks its link {e['hostInterface']}")
        wanted = {e["hostInterface"] for e in endpoints} | {n["bridge"] for n in networks}
        for name in links:
            if name.startswith("nc") and name not in wanted:
                problems.append(f"link {name}")
        namespaces = set(os.listdir(os.path.join(self.state, "netns")))
        owned = {os.path.basename(e["netns"]) for e in endpoints if e.get("ownsNetns")}
        for name in sorted(namespaces - owned):
            problems.append(f"namespace file {name}")
        with open("/proc/self/mountinfo") as f:
            mounted = {line.split()[4] for line in f}
        for path in sorted(m for m in mounted if m.startswith(os.path.join(self.state, "netns") + "/")):
            if os.path.basename(path) not in owned:
                problems.append(f"mount {path}")
        # IPv4-only networks here: an all-address port of the nft or auto backend is one v4_any element.
        expected = sorted(("v4_any", (p["proto"], p["hostPort"])) for p in ports if p["backend"] in ("nft", "auto"))
        actual = sorted((m, k) for m, k in self.map_elements())
        if expected != actual:
            problems.append(f"map elements {actual} where state has {expected}")
        containers = {c["id"] for c in self.json_of("ps", "-a")}
        runc = subprocess.run(["runc", "--root", os.path.join(self.state, "runc"), "list", "-q"],
                              capture_output=True, text=True, check=True).stdout.split()
        for c in runc:
            if c not in containers:
                problems.append(f"runc container {c}")
        return problems

    def settled_leaks(self, seconds=3):
        """Leaks that stay: detached deleters finish their work within moments."""
        deadline = time.monotonic() + seconds
        while True:
            found = self.leaks()
            if not found or time.monotonic() > deadline:
                return found
            time.sleep(0.1)

    def row(self, section, trials, failures, leaks, detail):
        self.rows.append({"section": section, "trials": trials, "failures": failures, "leaks": leaks, "detail": detail})
        print(f"  {section}: {trials} trials, {failures} failures, {leaks} leaks; {detail}", file=sys.stderr, flush=True)

    def reset(self):
        for c in self.json_of("ps", "-a"):
            self.netctl("rm", "-f", c["id"], timeout=60)
        for n in self.json_of("network", "ls"):
            self.netctl("network", "rm", "--force", n["name"], timeout=60)
        self.netctl("gc", timeout=60)

    # MARK: kill -9

    def kill_trials(self, count):
        have_image = os.path.isdir(IMAGE) and shutil.which("runc")
        self.netctl("network", "create", "k0", "--subnet", "10.201.0.0/22", check=True)
        made, failures, leaked, kinds = 0, [], 0, {}
        deadline = time.monotonic() + (120 if self.quick else 1200)
        for trial in range(count):
            if time.monotonic() > deadline:
                break
            # A few of each kind to act on (made whole, outside the trial), so detach, port and
            # stop trials are as common as attach ones.
            existing = [e["name"] for e in self.json_of("endpoints") if e["name"].startswith("c")]
            for i in range(max(0, 2 - len(existing))):
                self.netctl("attach", "k0", "--new", f"c{trial}p{i}", "--name", f"c{trial}p{i}", "-p", f"{40000 + trial * 2 + i}:80")
            if have_image and not self.json_of("ps", "-a"):
                self.netctl("run", "-d", "--name", f"r{trial}p", "--network", "k0", IMAGE, timeout=60)
            endpoints = [e["name"] for e in self.json_of("endpoints") if e["name"].startswith("c")]
            networks = [n["name"] for n in self.json_of("network", "ls") if n["name"].startswith("x")]
            containers = [c["name"] for c in self.json_of("ps", "-a")]
            port = 20000 + trial
            choices = [("attach", ["attach", "k0", "--new", f"c{trial}", "--name", f"c{trial}", "-p", f"{port}:80", "-p", f"{port + 5000}:81/udp"]),
                       ("network create", ["network", "create", f"x{trial}", "--subnet", f"10.202.{trial % 250}.0/24"])]
            if endpoints:
                victim = random.choice(endpoints)
                choices += [("detach", ["detach", victim]), ("port add", ["port", "add", victim, f"{port}:82"]),
                            ("port rm", ["port", "rm", victim])]
            if networks:
                choices.append(("network rm", ["network", "rm", "--force", random.choice(networks)]))
            if have_image:
                choices.append(("run", ["run", "-d", "--name", f"r{trial}", "--network", "k0", "-p", f"{port}:80", IMAGE]))
                if containers:
                    victim = random.choice(containers)
                    choices += [("stop", ["stop", "--time", "1", victim]), ("rm -f", ["rm", "-f", victim])]
            kind, args = random.choice(choices)
            kinds[kind] = kinds.get(kind, 0) + 1
            p = subprocess.Popen([NETCTL, *args], env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(random.uniform(0, 0.06))
            p.kill()
            p.wait()
            made += 1
            gc = self.netctl("gc", timeout=60)
            if gc.returncode != 0:
                failures.append(f"{kind}: gc failed: {gc.stderr.strip()}")
                continue
            found = self.settled_leaks()
            if found:
                leaked += 1
                failures.append(f"{kind}: {found[:3]}")
                self.reset()  # the next trial starts clean
                self.netctl("network", "create", "k0", "--subnet", "10.201.0.0/22")
        self.reset()
        # Everything gone at the end too: links, elements, namespaces, processes.
        end = self.settled_leaks()
        stray = [p for p in self.own_processes()]
        if end or stray:
            leaked += 1
            failures.append(f"after removing everything: {end[:3]} processes {stray}")
        detail = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
        self.row("kill -9 + gc", made, len(failures), leaked, detail + ("; " + "; ".join(failures[:3]) if failures else ""))

    # MARK: bursts

    def bursts(self, rounds):
        results, failures = [], 0
        for r in range(rounds):
            net = f"b{r}"
            self.netctl("network", "create", net, "--subnet", f"10.210.{r}.0/26", check=True)
            ports = list(range(30000, 30061)) + list(range(30000, 30020))
            procs = [subprocess.Popen([NETCTL, "attach", net, "--new", f"{net}e{i}", "--name", f"{net}e{i}", "-p", f"{ports[i]}:80"],
                                      env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                     for i in range(len(ports))]
            ok, false_exhaustion = 0, 0
            for p in procs:
                try:
                    _, err = p.communicate(timeout=120)
                except subprocess.TimeoutExpired:
                    p.kill(); p.wait(); err = "timed out"
                if p.returncode == 0:
                    ok += 1
                elif "no free address" in err and ok < 61:
                    false_exhaustion += 1
            addresses = {e["ipv4"] for e in self.json_of("endpoints") if e["network"] == net}
            results.append(ok)
            if ok != 61 or len(addresses) != 61:
                failures += 1
            self.netctl("network", "rm", "--force", net, timeout=120)
        self.netctl("gc")
        leaks = self.settled_leaks()
        self.row("81 attaches on a /26", rounds, failures, len(leaks), f"successes per round {results} (61 is right)")

    # MARK: flush under traffic

    def flush(self, flushes):
        self.netctl("network", "create", "f", "--subnet", "10.220.0.0/24", agent=True, check=True)
        self.netctl("attach", "f", "--new", "f1", "--name", "f1", "-p", "8080:80", agent=True, check=True)
        ns = os.path.join(self.state, "netns", "f1")
        self.start(["nsenter", "--net=" + ns, "socat", "-u", "OPEN:/dev/zero", "TCP-LISTEN:80,reuseaddr,fork"])
        gateway = "10.220.0.1"
        links = self.links()
        bridge_mac = bytes.fromhex(links["nc-f"]["address"].replace(":", ""))
        inside = json.loads(subprocess.run(["nsenter", "--net=" + ns, "ip", "-j", "addr", "show", "eth0"],
                                           capture_output=True, text=True, check=True).stdout)[0]
        container_ip = next(a["local"] for a in inside["addr_info"] if a["family"] == "inet")
        container_mac = bytes.fromhex(inside["address"].replace(":", ""))
        # A service bound only to the host's 127.0.0.1, and a control one on every address.
        secret = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); secret.bind(("127.0.0.1", 9999)); secret.setblocking(False)
        control = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); control.bind(("0.0.0.0", 9998)); control.setblocking(False)
        raw = self.in_namespace(ns, lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW))
        raw.bind(("eth0", 0))

        def crafted(destination, port):
            payload = b"probe"
            udp = struct.pack("!HHHH", 40000, port, 8 + len(payload), 0) + payload
            header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                                 socket.inet_aton(container_ip), socket.inet_aton(destination))
            s = sum(struct.unpack("!10H", header))
            s = (s & 0xffff) + (s >> 16); s = (s & 0xffff) + (s >> 16)
            header = header[:10] + struct.pack("!H", ~s & 0xffff) + header[12:]
            raw.send(bridge_mac + container_mac + b"\x08\x00" + header + udp)

        def drain(sock):
            n = 0
            while True:
                try:
                    sock.recv(64); n += 1
                except BlockingIOError:
                    return n

        def published():
            s = socket.socket(); s.settimeout(0.05)
            try:
                s.connect((gateway, 8080)); return True
            except OSError:
                return False
            finally:
                s.close()

        if not (wait_until(5, published)):
            raise RuntimeError("the published port never answered before the flushes")
        crafted(gateway, 9998)
        time.sleep(0.05)
        control_ok = drain(control) == 1
        # Transfers in flight across every flush.
        streams = []
        for _ in range(4):
            s = socket.create_connection((gateway, 8080), timeout=5); s.settimeout(2)
            streams.append(s)
        broken = 0
        latencies, probes, answered = [], 0, 0
        for _ in range(flushes):
            subprocess.run(["nft", "flush", "ruleset"], check=True)
            t0 = time.monotonic()
            while time.monotonic() - t0 < 5:
                crafted("127.0.0.1", 9999); probes += 1
                for s in streams:
                    try:
                        s.recv(65536)
                    except OSError:
                        pass
                if published():
                    break
            latencies.append((time.monotonic() - t0) * 1000)
            answered += drain(secret)
            time.sleep(0.05)
        for s in streams:
            try:
                if not s.recv(65536):
                    broken += 1
            except OSError:
                broken += 1
            s.close()
        time.sleep(0.1)
        answered += drain(secret)
        raw.close(); secret.close(); control.close()
        self.stop_all()
        latencies.sort()
        failures = int(not control_ok) + int(answered > 0) + broken + sum(1 for l in latencies if l >= 5000)
        self.row("nft flush ruleset under traffic", flushes, failures, 0,
                 f"back after p50 {latencies[len(latencies) // 2]:.1f} ms, max {latencies[-1]:.1f} ms (first connect through the "
                 f"table, polled); 127.0.0.1 probes answered {answered}/{probes} (control arrived: {control_ok}); "
                 f"transfers broken {broken}/{len(streams)}")
        self.netctl("network", "rm", "--force", "f", agent=True)
        self.netctl("gc")

    # MARK: state corruption

    def corruption(self, rounds):
        self.netctl("network", "create", "s", "--subnet", "10.230.0.0/24", check=True)
        self.netctl("attach", "s", "--new", "s1", "--name", "s1", "-p", "8090:80", check=True)
        db = os.path.join(self.state, "state.db")
        early = os.path.join(self.state, ".early.db")
        good = os.path.join(self.state, ".good.db")
        subprocess.run(["sqlite3", db, f".backup {early}"], check=True)
        self.netctl("attach", "s", "--new", "s2", "--name", "s2", "-p", "8091:80", check=True)
        subprocess.run(["sqlite3", db, f".backup {good}"], check=True)
        before = (sorted(self.links()), self.map_elements())
        trials, failures, notes = 0, 0, []

        def put(source):
            for suffix in ("-wal", "-shm"):
                if os.path.exists(db + suffix):
                    os.unlink(db + suffix)
            if source == "empty":
                open(db, "w").close()
            elif source == "garbage":
                with open(db, "wb") as f:
                    f.write(os.urandom(8192))
            else:
                shutil.copyfile(source, db)

        for _ in range(rounds):
            for variant, source in (("emptied", "empty"), ("rolled back", early), ("damaged", "garbage")):
                trials += 1
                put(source)
                gc = self.netctl("gc")
                reload = self.netctl("reload")
                after = (sorted(self.links()), self.map_elements())
                if gc.returncode != 1 or reload.returncode != 1 or after != before or "cannot be trusted" not in gc.stderr:
                    failures += 1
                    notes.append(f"{variant}: gc {gc.returncode} {gc.stderr.strip()[:100]}")
                put(good)
                if self.netctl("gc").returncode != 0:
                    failures += 1
                    notes.append(f"{variant}: gc refused the good state back")
                # gc counted a write: the copy to put back next is the state as it is now.
                subprocess.run(["sqlite3", db, f".backup {good}"], check=True)
        self.netctl("network", "rm", "--force", "s")
        self.netctl("gc")
        self.row("state.db emptied / rolled back / damaged", trials, failures, 0,
                 "gc and reload refuse, kernel unchanged" + ("; " + "; ".join(notes[:3]) if notes else ""))

    # MARK: proxy floods

    def proxy(self, resets, idle):
        self.netctl("network", "create", "p", "--subnet", "10.240.0.0/24", check=True)
        self.netctl("attach", "p", "--new", "p1", "--name", "p1", check=True)
        ns = os.path.join(self.state, "netns", "p1")
        silent = self.in_namespace(ns, lambda: socket.socket())
        silent.bind(("0.0.0.0", 7000)); silent.listen(16)  # accepts nothing
        echo_server = self.in_namespace(ns, lambda: socket.socket())
        echo_server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        echo_server.bind(("0.0.0.0", 7001)); echo_server.listen(4096)
        stop_echo = threading.Event()
        threading.Thread(target=serve_echo, args=(echo_server, stop_echo), daemon=True).start()
        self.netctl("port", "add", "p1", "--backend", "proxy", "127.0.0.1:9400:7000", "127.0.0.1:9401:7001", check=True)
        serve = self.start([NETCTL, "proxy", "serve", "--drain", "0"], env=self.env)

        def sockets():
            n = 0
            for fd in os.listdir(f"/proc/{serve.pid}/fd"):
                try:
                    n += os.readlink(f"/proc/{serve.pid}/fd/{fd}").startswith("socket:")
                except OSError:
                    pass
            return n

        def rss():
            with open(f"/proc/{serve.pid}/status") as f:
                return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))

        def echo():
            try:
                s = socket.create_connection(("127.0.0.1", 9401), timeout=1)
                s.sendall(b"x"); ok = s.recv(1) == b"x"; s.close(); return ok
            except OSError:
                return False

        if not wait_until(10, echo):
            raise RuntimeError("the proxy never served")
        time.sleep(0.5)
        baseline, rss0 = sockets(), rss()
        failures, notes = 0, []
        # Connect + reset against the silent backend.
        start, sent = time.monotonic(), 0
        while sent < resets and time.monotonic() - start < 120:
            s = socket.socket(); s.settimeout(2)
            try:
                s.connect(("127.0.0.1", 9400)); sent += 1
            except OSError:
                pass
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        t0 = time.monotonic()
        back = wait_until(5, lambda: sockets() <= baseline)
        reset_seconds = time.monotonic() - t0
        if not back:
            failures += 1
        notes.append(f"{sent} resets: sockets {'back in %.2f s' % reset_seconds if back else 'still %d (baseline %d)' % (sockets(), baseline)}")
        # Idle connections to the echo backend, held, then closed.
        held = []
        for _ in range(idle):
            try:
                held.append(socket.create_connection(("127.0.0.1", 9401), timeout=2))
            except OSError:
                break
        wait_until(10, lambda: sockets() >= baseline + 2 * len(held))
        peak = sockets()
        for s in held:
            s.close()
        t0 = time.monotonic()
        back = wait_until(5, lambda: sockets() <= baseline)
        if not back:
            failures += 1
        notes.append(f"{len(held)} idle: {peak - baseline} sockets held, back {'in %.2f s' % (time.monotonic() - t0) if back else 'never'}")
        notes.append(f"RSS {rss0 // 1024} -> {rss() // 1024} MB")
        silent.close()
        stop_echo.set()
        self.stop_all()
        self.netctl("network", "rm", "--force", "p")
        self.netctl("gc")
        self.row("proxy floods", 2, failures, 0, "; ".join(notes))


def serve_echo(listener, stop):
    """An echo backend with a deep backlog (socat's is 5), on one thread."""
    import selectors
    sel = selectors.DefaultSelector()
    listener.setblocking(False)
    sel.register(listener, selectors.EVENT_READ)
    while not stop.is_set():
        for key, _ in sel.select(timeout=0.1):
            if key.fileobj is listener:
                try:
                    while True:
                        c, _ = listener.accept(); c.setblocking(False); sel.register(c, selectors.EVENT_READ)
                except BlockingIOError:
                    pass
                continue
            try:
                data = key.fileobj.recv(65536)
            except OSError:
                data = b""
            if data:
                try:
                    key.fileobj.send(data)
                except OSError:
                    pass
            else:
                sel.unregister(key.fileobj); key.fileobj.close()
    for key in list(sel.get_map().values()):
        key.fileobj.close()


def wait_until(seconds, condition):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--trials", type=int, help="kill -9 trials (default 1000, --quick 100)")
    parser.add_argument("--only", help="comma-separated sections: kill,burst,flush,state,proxy")
    options = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    chaos = Chaos(options.quick)
    sections = (options.only or "kill,burst,flush,state,proxy").split(",")
    q = options.quick
    try:
        if "kill" in sections:
            chaos.kill_trials(options.trials or (100 if q else 1000))
        if "burst" in sections:
            chaos.bursts(1 if q else 3)
        if "flush" in sections:
            chaos.flush(10 if q else 50)
        if "state" in sections:
            chaos.corruption(1 if q else 3)
        if "proxy" in sections:
            chaos.proxy(2000 if q else 10000, 500 if q else 2000)
    finally:
        chaos.stop_all()
        try:
            chaos.reset()
        except Exception as e:
            print(f"chaos: cleaning up: {e}", file=sys.stderr)
        for pid in chaos.own_processes():  # an agent or a monitor this run started
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(chaos.state, ignore_errors=True)
    width = max(len(r["section"]) for r in chaos.rows) if chaos.rows else 10
    print(f"{'section':<{width}}  {'trials':>6}  {'failures':>8}  {'leaks':>5}  detail")
    for r in chaos.rows:
        print(f"{r['section']:<{width}}  {r['trials']:>6}  {r['failures']:>8}  {r['leaks']:>5}  {r['detail']}")
    if options.json:
        with open(options.json, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "quick": q, "rows": chaos.rows}, f, indent=2)
    return 1 if any(r["failures"] or r["leaks"] for r in chaos.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
