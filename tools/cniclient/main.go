// netctl-cniclient: a small CNI runtime for netctl's tests and benchmarks, built on the
// CNI project's libcni (Debian: golang-github-appc-cni-dev), so plugins are driven exactly
// as containerd, CRI-O and Podman drive them.
//
//	netctl-cniclient add|check|del CONFLIST NETNS [CONTAINERID] [IFNAME]
//	netctl-cniclient bench CONFLIST N NETNS...   ADD then DEL per namespace, timed in-process
//	                                             (BENCH_PORT_BASE=P: container i publishes P+i -> 80/tcp)
//
// Environment: CNI_PATH (plugin directories, ':'-separated), CNI_CACHE_DIR (libcni's result
// cache), CAP_ARGS (JSON object of capability arguments, e.g. {"portMappings": [...]}),
// CNI_ARGS (KEY=VALUE;... passed through).
//
// ADD prints the result; a failure prints the plugin's error JSON to stdout when the plugin
// gave one (libcni's *types.Error) and exits 1.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
)

func fail(err error) {
	if e, ok := err.(*types.Error); ok {
		out, _ := json.Marshal(e)
		fmt.Println(string(out))
	}
	fmt.Fprintln(os.Stderr, "netctl-cniclient:", err)
	os.Exit(1)
}

func runtimeConf(containerID, netns, ifname string) *libcni.RuntimeConf {
	rt := &libcni.RuntimeConf{ContainerID: containerID, NetNS: netns, IfName: ifname}
	if caps := os.Getenv("CAP_ARGS"); caps != "" {
		if err := json.Unmarshal([]byte(caps), &rt.CapabilityArgs); err != nil {
			fail(fmt.Errorf("CAP_ARGS is not a JSON object: %v", err))
		}
	}
	for _, pair := range strings.Split(os.Getenv("CNI_ARGS"), ";") {
		if kv := strings.SplitN(pair, "=", 2); len(kv) == 2 {
			rt.Args = append(rt.Args, [2]string{kv[0], kv[1]})
		}
	}
	return rt
}

func main() {
	if len(os.Args) < 4 {
		fmt.Fprintln(os.Stderr, "usage: netctl-cniclient add|check|del CONFLIST NETNS [CONTAINERID] [IFNAME] | bench CONFLIST N NETNS...")
		os.Exit(2)
	}
	list, err := libcni.ConfListFromFile(os.Args[2])
	if err != nil {
		fail(err)
	}
	cni := libcni.NewCNIConfigWithCacheDir(strings.Split(os.Getenv("CNI_PATH"), ":"), os.Getenv("CNI_CACHE_DIR"), nil)
	ctx := context.Background()

	if os.Args[1] == "bench" {
		bench(ctx, cni, list, os.Args[3], os.Args[4:])
		return
	}
	netns := os.Args[3]
	containerID, ifname := "netctl-cniclient", "eth0"
	if len(os.Args) > 4 {
		containerID = os.Args[4]
	}
	if len(os.Args) > 5 {
		ifname = os.Args[5]
	}
	rt := runtimeConf(containerID, netns, ifname)
	switch os.Args[1] {
	case "add":
		result, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			fail(err)
		}
		if err := result.Print(); err != nil {
			fail(err)
		}
	case "check":
		if err := cni.CheckNetworkList(ctx, list, rt); err != nil {
			fail(err)
		}
	case "del":
		if err := cni.DelNetworkList(ctx, list, rt); err != nil {
			fail(err)
		}
	default:
		fmt.Fprintln(os.Stderr, "netctl-cniclient: unknown command", os.Args[1])
		os.Exit(2)
	}
}

// bench ADDs every namespace (one container each), then DELs them, timing each call; prints
// one line per operation: "add|del MICROSECONDS".
func bench(ctx context.Context, cni *libcni.CNIConfig, list *libcni.NetworkConfigList, count string, namespaces []string) {
	n, err := strconv.Atoi(count)
	if err != nil || n < 1 || n > len(namespaces) {
		fail(fmt.Errorf("bench: N must be 1..%d", len(namespaces)))
	}
	base, _ := strconv.Atoi(os.Getenv("BENCH_PORT_BASE"))
	conf := func(i int) *libcni.RuntimeConf {
		rt := runtimeConf(fmt.Sprintf("bench-%d", i), namespaces[i], "eth0")
		if base > 0 {
			rt.CapabilityArgs = map[string]interface{}{"portMappings": []map[string]interface{}{
				{"hostPort": base + i, "containerPort": 80, "protocol": "tcp"}}}
		}
		return rt
	}
	for i := 0; i < n; i++ {
		rt := conf(i)
		start := time.Now()
		if _, err := cni.AddNetworkList(ctx, list, rt); err != nil {
			fail(fmt.Errorf("ADD %d: %w", i, err))
		}
		fmt.Printf("add %d\n", time.Since(start).Microseconds())
	}
	for i := 0; i < n; i++ {
		rt := conf(i)
		start := time.Now()
		if err := cni.DelNetworkList(ctx, list, rt); err != nil {
			fail(fmt.Errorf("DEL %d: %w", i, err))
		}
		fmt.Printf("del %d\n", time.Since(start).Microseconds())
	}
}
