// cnidriver: a minimal CNI runtime built on libcni (the library containerd, CRI-O and
// podman use), so tests can drive plugins exactly as a runtime does.
//
//	cnidriver add|check|del <conflist> <containerID> <netns> <ifname>
//	          [--cache-dir D] [--args K=V;K2=V2] [--capability-args JSON]
//
// CNI_PATH comes from the environment. ADD prints the result JSON on stdout; errors go to
// stderr as JSON ({"code", "msg", "details"}) with exit status 1.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
)

func fail(err error) {
	e, ok := err.(*types.Error)
	if !ok {
		e = &types.Error{Code: 999, Msg: err.Error()}
	}
	enc := json.NewEncoder(os.Stderr)
	enc.SetEscapeHTML(false)
	enc.Encode(e)
	os.Exit(1)
}

func main() {
	var pos []string
	cacheDir, cniArgs, capArgs := "", "", ""
	for i := 1; i < len(os.Args); i++ {
		a := os.Args[i]
		if strings.HasPrefix(a, "--") && i+1 < len(os.Args) {
			switch a {
			case "--cache-dir":
				cacheDir = os.Args[i+1]
			case "--args":
				cniArgs = os.Args[i+1]
			case "--capability-args":
				capArgs = os.Args[i+1]
			default:
				fail(fmt.Errorf("unknown option %s", a))
			}
			i++
			continue
		}
		pos = append(pos, a)
	}
	if len(pos) != 5 {
		fail(fmt.Errorf("usage: cnidriver add|check|del <conflist> <containerID> <netns> <ifname> [--cache-dir D] [--args K=V;..] [--capability-args JSON]"))
	}
	list, err := libcni.ConfListFromFile(pos[1])
	if err != nil {
		fail(err)
	}
	rt := &libcni.RuntimeConf{ContainerID: pos[2], NetNS: pos[3], IfName: pos[4]}
	for _, kv := range strings.Split(cniArgs, ";") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			rt.Args = append(rt.Args, [2]string{k, v})
		}
	}
	if capArgs != "" {
		if err := json.Unmarshal([]byte(capArgs), &rt.CapabilityArgs); err != nil {
			fail(fmt.Errorf("--capability-args: %v", err))
		}
	}
	cni := libcni.NewCNIConfigWithCacheDir(filepath.SplitList(os.Getenv("CNI_PATH")), cacheDir, nil)
	ctx := context.Background()
	switch pos[0] {
	case "add":
		res, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			fail(err)
		}
		if err := res.PrintTo(os.Stdout); err != nil {
			fail(err)
		}
	case "check":
		err = cni.CheckNetworkList(ctx, list, rt)
	case "del":
		err = cni.DelNetworkList(ctx, list, rt)
	default: // libcni 1.1.2 has no GC/STATUS
		err = fmt.Errorf("unsupported command %q (libcni 1.1.2: add, check, del)", pos[0])
	}
	if err != nil {
		fail(err)
	}
}
