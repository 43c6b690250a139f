// Command libcni drives a CNI plugin through libcni, the library every Go
// runtime (podman, containerd, CRI-O, Kubernetes' kubelet via them) uses,
// and prints one TAP line per check. Built and run by tests/cni/libcni.sh.
//
// For each conflist given (one cniVersion each; one libcni cannot convert
// is skipped, naming the versions it can) it claims:
//   - libcni's plugins answer VERSION naming the list's version, or the
//     version is skipped (and said so) when one of them does not;
//   - ValidateNetworkList accepts the list;
//   - AddNetworkList gives a result of the list's version whose interface
//     sits in the namespace, with an address of the list's IPv4 subnet (and
//     of its IPv6 one, with -subnet6-prefix) on that interface, and its
//     addresses, no others, leased;
//   - the chain's last plugin (a recording one) was sent the list's
//     cniVersion and the address as prevResult, on ADD and on CHECK;
//   - GetNetworkListCachedResult returns the same addresses, of that version;
//   - CheckNetworkList passes (from 0.4.0; before it libcni refuses CHECK),
//     and fails once the address is removed from the interface;
//   - DelNetworkList removes the interface, releases the lease and the
//     cached result, and succeeds a second time; the last plugin got the
//     cached result as prevResult from 0.4.0, none before;
//   - DEL with the cached result removed (no prevResult sent) succeeds,
//     removes the interface and releases the address;
//   - DEL after the namespace was deleted succeeds and releases the address.
//
// Usage: libcni -netns PATH -path DIR[:DIR] -cache DIR -leases CMD
// -record FILE -subnet-prefix 10.88.13. CONFLIST...
// The exit status is 1 if any check failed.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
)

var (
	netns      = flag.String("netns", "", "path of the network namespace to attach")
	pluginPath = flag.String("path", "/usr/lib/cni", "colon-separated plugin directories")
	cacheDir   = flag.String("cache", "", "libcni's result cache directory")
	leasesCmd  = flag.String("leases", "", "shell command printing the addresses leased on $CNI_NETWORK")
	recordLog  = flag.String("record", "", "the recording plugin's log (JSON lines)")
	prefix     = flag.String("subnet-prefix", "10.88.13.", "what the IPv4 address handed out starts with")
	prefix6    = flag.String("subnet6-prefix", "", "what the IPv6 address handed out starts with; empty: no IPv6 expected")

	n, failed, skipped int
)

func ok(claim string) {
	n++
	fmt.Printf("ok %d - %s\n", n, claim)
}

func notOK(claim, expected, seen string) {
	n++
	failed++
	fmt.Printf("not ok %d - %s\n#   expected: %s\n", n, claim, expected)
	for _, l := range strings.Split(seen, "\n") {
		fmt.Printf("#   seen:     %s\n", l)
	}
}

func skip(claim, why string) {
	n++
	skipped++
	fmt.Printf("ok %d - %s # SKIP %s\n", n, claim, why)
}

func check(claim, expected, seen string) {
	if expected == seen {
		ok(claim)
	} else {
		notOK(claim, expected, seen)
	}
}

func checkErr(claim string, err error) {
	if err == nil {
		ok(claim)
	} else {
		notOK(claim, "no error", err.Error())
	}
}

// leases runs the -leases command for a network: its lines, sorted.
func leases(network string) []string {
	cmd := exec.Command("bash", "-c", *leasesCmd)
	cmd.Env = append(os.Environ(), "CNI_NETWORK="+network)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return []string{"(leases command failed: " + err.Error() + ")"}
	}
	lines := []string{}
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if l != "" {
			lines = append(lines, l)
		}
	}
	sort.Strings(lines)
	return lines
}

func contains(list []string, s string) bool {
	for _, l := range list {
		if l == s {
			return true
		}
	}
	return false
}

// inNetns runs a command inside the namespace under test.
func inNetns(args ...string) (string, error) {
	out, err := exec.Command("nsenter", append([]string{"--net=" + *netns}, args...)...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// addrsOf lists the IPv4 addresses (with prefix) on an interface of the
// namespace; empty if it does not exist.
func addrsOf(ifname string) []string { return addrsOfFamily(ifname, "-4", "inet") }

// addrs6Of lists the global IPv6 addresses (with prefix) on an interface.
func addrs6Of(ifname string) []string { return addrsOfFamily(ifname, "-6", "inet6") }

func addrsOfFamily(ifname, family, word string) []string {
	out, err := inNetns("ip", "-o", family, "addr", "show", "dev", ifname, "scope", "global")
	if err != nil {
		return nil
	}
	addrs := []string{}
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		for i := range f {
			if f[i] == word && i+1 < len(f) {
				addrs = append(addrs, f[i+1])
			}
		}
	}
	return addrs
}

// sent is what the recording plugin (the list's last) was sent for a verb
// and container: "cniVersion prevResult-address" per call.
func sent(command, containerID string) string {
	data, err := os.ReadFile(*recordLog)
	if err != nil {
		return "(no record: " + err.Error() + ")"
	}
	seen := []string{}
	for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		var rec struct {
			Command     string `json:"command"`
			ContainerID string `json:"containerID"`
			Config      struct {
				CNIVersion string `json:"cniVersion"`
				PrevResult struct {
					IPs []struct {
						Address string `json:"address"`
					} `json:"ips"`
				} `json:"prevResult"`
			} `json:"config"`
		}
		if json.Unmarshal([]byte(l), &rec) == nil && rec.Command == command && rec.ContainerID == containerID {
			addrs := []string{}
			for _, ip := range rec.Config.PrevResult.IPs {
				addrs = append(addrs, ip.Address)
			}
			seen = append(seen, rec.Config.CNIVersion+" "+strings.Join(addrs, ","))
		}
	}
	return strings.Join(seen, ";")
}

func ipsOf(r types.Result) ([]string, *current.Result, error) {
	res, err := current.NewResultFromResult(r)
	if err != nil {
		return nil, nil, err
	}
	ips := []string{}
	for _, ip := range res.IPs {
		ips = append(ips, ip.Address.String())
	}
	return ips, res, nil
}

func drive(ctx context.Context, cni *libcni.CNIConfig, file string) {
	list, err := libcni.ConfListFromFile(file)
	if err != nil {
		notOK("load "+file, "a conflist", err.Error())
		return
	}
	v := list.CNIVersion
	t := func(claim string) string { return v + ": " + claim }
	// A version libcni or a plugin of the list does not speak is skipped,
	// naming each that lacks it.
	lacking := []string{}
	if !contains(version.All.SupportedVersions(), v) {
		lacking = append(lacking, fmt.Sprintf("this libcni converts only %v", version.All.SupportedVersions()))
	}
	for _, p := range list.Plugins {
		info, err := cni.GetVersionInfo(ctx, p.Network.Type)
		if err != nil {
			notOK(t(p.Network.Type+" answers VERSION"), "its versions", err.Error())
			return
		}
		if !contains(info.SupportedVersions(), v) {
			lacking = append(lacking, fmt.Sprintf("%s supports only %v", p.Network.Type, info.SupportedVersions()))
		}
	}
	if len(lacking) > 0 {
		skip(t("the list"), strings.Join(lacking, "; "))
		return
	}
	ok(t("every plugin of the list supports " + v))
	if caps, err := cni.ValidateNetworkList(ctx, list); err != nil {
		notOK(t("ValidateNetworkList accepts the list"), "no error", err.Error())
	} else {
		sort.Strings(caps)
		ok(t(fmt.Sprintf("ValidateNetworkList accepts the list (capabilities %v)", caps)))
	}

	rt := &libcni.RuntimeConf{
		ContainerID: "libcni-" + strings.ReplaceAll(v, ".", ""),
		NetNS:       *netns,
		IfName:      "eth0",
		Args:        [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAME", "libcni"}},
	}

	// ADD
	res, err := cni.AddNetworkList(ctx, list, rt)
	if err != nil {
		notOK(t("AddNetworkList"), "a result", err.Error())
		return
	}
	ok(t("AddNetworkList succeeds"))
	check(t("the result is of the list's version"), v, res.Version())
	ips, cur, err := ipsOf(res)
	if err != nil {
		notOK(t("the result's addresses parse"), "addresses", err.Error())
		return
	}
	ip, ip6 := pick(ips, *prefix), pick(ips, *prefix6)
	if ip == "" {
		notOK(t("the result has an address in the list's IPv4 subnet"), *prefix+"x", strings.Join(ips, ","))
		return
	}
	ok(t("the result has an address in the list's IPv4 subnet: " + ip))
	if *prefix6 != "" {
		if ip6 == "" {
			notOK(t("the result has an address in the list's IPv6 subnet"), *prefix6+"x", strings.Join(ips, ","))
		} else {
			ok(t("the result has an address in the list's IPv6 subnet: " + ip6))
			check(t("the IPv6 address is on eth0 in the namespace"), ip6, strings.Join(addrs6Of("eth0"), ","))
		}
	} else {
		skip(t("the result has an address in the list's IPv6 subnet"), "no IPv6 range in the conflist")
	}
	all := strings.Join(ips, ",")
	bares := bareAll(ips)
	sandboxes := []string{}
	for _, i := range cur.Interfaces {
		if i.Sandbox != "" {
			sandboxes = append(sandboxes, i.Name+"@"+i.Sandbox)
		}
	}
	// 0.3.x and later results name the interfaces; 0.2.0 ones do not.
	check(t("the result's interface in a sandbox is eth0 in the namespace"), "eth0@"+*netns, strings.Join(sandboxes, ","))
	check(t("the IPv4 address is on eth0 in the namespace"), ip, strings.Join(addrsOf("eth0"), ","))
	check(t("the result's addresses, and no others, are leased"), strings.Join(sorted(bares), ","), strings.Join(leases(list.Name), ","))
	check(t("libcni sends the chain's last plugin the list's cniVersion and the addresses as prevResult on ADD"),
		v+" "+all, sent("ADD", rt.ContainerID))

	// The result cache.
	cached, err := cni.GetNetworkListCachedResult(list, rt)
	switch {
	case err != nil:
		notOK(t("GetNetworkListCachedResult"), "the ADD result", err.Error())
	case cached == nil:
		notOK(t("GetNetworkListCachedResult"), "the ADD result", "nil")
	default:
		cips, _, err := ipsOf(cached)
		check(t("the cached result is of the list's version"), v, cached.Version())
		check(t("the cached result has the ADD's addresses"), strings.Join(ips, ","), fmt.Sprintf("%s%v", strings.Join(cips, ","), errOrEmpty(err)))
	}

	// CHECK exists from 0.4.0 on.
	hasCheck, err := version.GreaterThanOrEqualTo(v, "0.4.0")
	if err != nil {
		notOK(t("parse version"), v, err.Error())
		return
	}
	if hasCheck {
		checkErr(t("CheckNetworkList passes"), cni.CheckNetworkList(ctx, list, rt))
		check(t("libcni sends the chain's last plugin the list's cniVersion and the cached result as prevResult on CHECK"),
			v+" "+all, sent("CHECK", rt.ContainerID))
		if out, err := inNetns("ip", "addr", "del", ip, "dev", "eth0"); err != nil {
			notOK(t("remove the address for CHECK"), "done", out)
		} else if err := cni.CheckNetworkList(ctx, list, rt); err != nil {
			ok(t("CheckNetworkList fails once the address is gone: " + err.Error()))
		} else {
			notOK(t("CheckNetworkList fails once the address is gone"), "an error", "nil")
		}
	} else {
		err := cni.CheckNetworkList(ctx, list, rt)
		if err != nil {
			ok(t("libcni refuses CHECK before 0.4.0: " + err.Error()))
		} else {
			notOK(t("libcni refuses CHECK before 0.4.0"), "an error", "nil")
		}
	}

	// DEL, twice.
	checkErr(t("DelNetworkList succeeds"), cni.DelNetworkList(ctx, list, rt))
	if hasCheck {
		check(t("libcni sends the chain's last plugin the cached result as prevResult on DEL"), v+" "+all, lastSent("DEL", rt.ContainerID))
	} else {
		check(t("libcni sends no prevResult on DEL before 0.4.0"), v+" ", lastSent("DEL", rt.ContainerID))
	}
	if _, err := inNetns("ip", "link", "show", "eth0"); err == nil {
		notOK(t("DEL removes the link eth0"), "no eth0", "eth0 exists")
	} else {
		ok(t("DEL removes the link eth0"))
	}
	checkReleased(list.Name, bares, t("DEL releases the addresses"))
	cached, err = cni.GetNetworkListCachedResult(list, rt)
	if err == nil && cached == nil {
		ok(t("DEL drops the cached result"))
	} else {
		notOK(t("DEL drops the cached result"), "nil, nil", fmt.Sprintf("%v, %v", cached, err))
	}
	checkErr(t("DelNetworkList succeeds a second time"), cni.DelNetworkList(ctx, list, rt))

	// DEL with no cached result, as after a runtime lost its cache: no
	// prevResult reaches the plugins.
	rt.ContainerID += "-nocache"
	if bares, added := addFor(ctx, cni, list, rt, t("ADD for DEL without a cached result")); added {
		path := filepath.Join(*cacheDir, "results", fmt.Sprintf("%s-%s-%s", list.Name, rt.ContainerID, rt.IfName))
		if err := os.Remove(path); err != nil {
			notOK(t("remove the cached result"), "removed", err.Error())
		} else {
			checkErr(t("DelNetworkList without a cached result succeeds"), cni.DelNetworkList(ctx, list, rt))
			check(t("libcni sends the chain's last plugin no prevResult then"), v+" ", lastSent("DEL", rt.ContainerID))
			checkReleased(list.Name, bares, t("DEL without a cached result releases the addresses"))
			if _, err := inNetns("ip", "link", "show", "eth0"); err == nil {
				notOK(t("DEL without a cached result removes eth0"), "no eth0", "eth0 exists")
			} else {
				ok(t("DEL without a cached result removes eth0"))
			}
		}
	}

	// DEL once the namespace is gone, as after a pod's sandbox died.
	gone := "libcni-gone-" + strings.ReplaceAll(v, ".", "")
	if out, err := exec.Command("ip", "netns", "add", gone).CombinedOutput(); err != nil {
		notOK(t("make a namespace to lose"), "made", string(out))
		return
	}
	rtGone := &libcni.RuntimeConf{ContainerID: "libcni-gone-" + strings.ReplaceAll(v, ".", ""),
		NetNS: "/run/netns/" + gone, IfName: "eth0"}
	bares, added := addFor(ctx, cni, list, rtGone, t("ADD for DEL after the namespace is gone"))
	if out, err := exec.Command("ip", "netns", "del", gone).CombinedOutput(); err != nil {
		notOK(t("remove the namespace"), "removed", string(out))
		return
	}
	if added {
		checkErr(t("DelNetworkList after the namespace is gone succeeds"), cni.DelNetworkList(ctx, list, rtGone))
		checkReleased(list.Name, bares, t("DEL after the namespace is gone releases the addresses"))
	}
}

// addFor runs AddNetworkList and returns the addresses it gave, bare.
func addFor(ctx context.Context, cni *libcni.CNIConfig, list *libcni.NetworkConfigList, rt *libcni.RuntimeConf, claim string) ([]string, bool) {
	res, err := cni.AddNetworkList(ctx, list, rt)
	if err != nil {
		notOK(claim, "a result", err.Error())
		return nil, false
	}
	ips, _, err := ipsOf(res)
	if err != nil || pick(ips, *prefix) == "" {
		notOK(claim, "an address starting "+*prefix, fmt.Sprintf("%v %v", ips, err))
		return nil, false
	}
	ok(claim)
	return bareAll(ips), true
}

// checkReleased: none of the addresses is leased on the network.
func checkReleased(network string, addrs []string, claim string) {
	l := leases(network)
	for _, a := range addrs {
		if contains(l, a) {
			notOK(claim, "none of "+strings.Join(addrs, ","), strings.Join(l, ","))
			return
		}
	}
	ok(claim)
}

// pick is the first address starting with prefix ("" if none or no prefix).
func pick(addrs []string, prefix string) string {
	if prefix == "" {
		return ""
	}
	for _, a := range addrs {
		if strings.HasPrefix(a, prefix) {
			return a
		}
	}
	return ""
}

// bareAll drops the prefix lengths.
func bareAll(addrs []string) []string {
	out := []string{}
	for _, a := range addrs {
		out = append(out, strings.SplitN(a, "/", 2)[0])
	}
	return out
}

func sorted(l []string) []string {
	c := append([]string(nil), l...)
	sort.Strings(c)
	return c
}

// lastSent is the last of sent's calls.
func lastSent(command, containerID string) string {
	all := strings.Split(sent(command, containerID), ";")
	return all[len(all)-1]
}

func errOrEmpty(err error) string {
	if err == nil {
		return ""
	}
	return " (" + err.Error() + ")"
}

func main() {
	flag.Parse()
	if *netns == "" || *cacheDir == "" || *leasesCmd == "" || *recordLog == "" || flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: libcni -netns PATH -path DIRS -cache DIR -leases CMD -record FILE CONFLIST...")
		os.Exit(2)
	}
	fmt.Printf("# libcni implements spec %s; versions it converts: %v\n",
		version.Current(), version.All.SupportedVersions())
	ctx := context.Background()
	cni := libcni.NewCNIConfigWithCacheDir(strings.Split(*pluginPath, ":"), *cacheDir, nil)
	for _, file := range flag.Args() {
		drive(ctx, cni, file)
	}
	fmt.Printf("1..%d\n%d passed, %d failed, %d skipped\n", n, n-failed-skipped, failed, skipped)
	if failed > 0 {
		os.Exit(1)
	}
}
