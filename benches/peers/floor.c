/* floor.c - the kernel floor for creating and tearing down pod sandboxes.
 *
 * Bench peer (docs/performance.md):  floor [--holder fd|fork|exec] N [C]
 * run.sh builds it (gcc -O2 -Wall -pthread -o floor floor.c) and runs it inside a round's
 * namespaces, where bridge $BENCH_BRIDGE already exists: `floor` is the fd holder,
 * `floor-fork` and `floor-exec` the others (benches/peers/run.sh floor floor-fork floor-exec).
 * Per sandbox it makes the fewest syscalls this kernel allows:
 *   netns     fd:   unshare(CLONE_NEWNET) on the worker thread, keep an fd, setns back
 *             fork: clone(CLONE_NEWNET) a child that pause()s (the holder)
 *             exec: clone(CLONE_NEWNET|CLONE_VFORK) a child that execs $BENCH_PAUSE
 *   host side one RTM_NEWLINK: veth pnbI, master bridge, up; peer eth0 (ifindex 2)
 *             moved into the netns by IFLA_NET_NS_FD (the peer cannot be set up in the
 *             same message: veth_open() refuses, -ENOTCONN, until both ends exist)
 *   inside    one sendmsg on a netlink socket opened in the netns:
 *             lo up + eth0 up + address + default route (four messages, four acks)
 * Teardown: RTM_DELLINK pnbI, close the netns fds (kill + reap the holder).
 * Prints one JSON line: {"peer","n","c","create_ms":[..],"teardown_ms":[..],...}.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h> /* before the linux/ headers */
#include <linux/if_link.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/veth.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum holder { H_FD, H_FORK, H_EXEC };

struct sandbox { int nsfd, nl; pid_t pid; };

static enum holder mode = H_FD;
static int n, c = 1, host_ns, bridge_index, prefix;
static uint32_t subnet_base; /* host order */
static struct in_addr gateway;
static const char *pause_path;
static struct sandbox *sb;
static double *create_ms, *teardown_ms;
static atomic_int next_index;

static void die(const char *what, int err)
{
	fprintf(stderr, "floor: %s: %s\n", what, strerror(err));
	exit(1);
}

static double now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

/* ---- netlink message building ---- */

struct req { char buf[1024]; size_t len; int msgs; };

static struct nlmsghdr *msg_begin(struct req *r, int type, int flags, const void *hdr, size_t hlen)
{
	struct nlmsghdr *h = (void *)(r->buf + r->len);
	memset(h, 0, NLMSG_SPACE(hlen));
	h->nlmsg_type = type;
	h->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | flags;
	h->nlmsg_seq = ++r->msgs;
	h->nlmsg_len = NLMSG_LENGTH(hlen);
	memcpy(NLMSG_DATA(h), hdr, hlen);
	return h;
}

static void msg_end(struct req *r, struct nlmsghdr *h) { r->len += NLMSG_ALIGN(h->nlmsg_len); }

static struct rtattr *attr(struct nlmsghdr *h, int type, const void *data, size_t len)
{
	struct rtattr *a = (void *)((char *)h + NLMSG_ALIGN(h->nlmsg_len));
	a->rta_type = type;
	a->rta_len = RTA_LENGTH(len);
	if (len)
		memcpy(RTA_DATA(a), data, len);
	h->nlmsg_len = NLMSG_ALIGN(h->nlmsg_len) + RTA_ALIGN(a->rta_len);
	return a;
}

static void nest_end(struct nlmsghdr *h, struct rtattr *a) { a->rta_len = (char *)h + h->nlmsg_len - (char *)a; }

/* Send every message of r in one sendmsg, then wait for one ack per message. */
static int talk(int fd, struct req *r)
{
	char buf[8192];
	struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
	int acked = 0;
	if (sendto(fd, r->buf, r->len, 0, (struct sockaddr *)&kernel, sizeof kernel) < 0)
		return errno;
	while (acked < r->msgs) {
		ssize_t got = recv(fd, buf, sizeof buf, 0);
		if (got < 0)
			return errno;
		for (struct nlmsghdr *h = (void *)buf; NLMSG_OK(h, got); h = NLMSG_NEXT(h, got)) {
			if (h->nlmsg_type != NLMSG_ERROR)
				continue;
			int err = -((struct nlmsgerr *)NLMSG_DATA(h))->error;
			if (err)
				return err;
			acked++;
		}
	}
	return 0;
}

static int nl_socket(void)
{
	int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
	if (fd < 0)
		die("socket(NETLINK_ROUTE)", errno);
	return fd;
}

/* ---- one sandbox ---- */

static void make_netns(struct sandbox *s)
{
	char path[64];
	if (mode == H_FD) {
		if (unshare(CLONE_NEWNET))
			die("unshare(CLONE_NEWNET)", errno);
		s->nsfd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
		s->nl = nl_socket(); /* a netlink socket belongs to the netns it was opened in */
		if (s->nsfd < 0 || setns(host_ns, CLONE_NEWNET))
			die("netns fd", errno);
		return;
	}
	/* A holder process born in its own netns; CLONE_VFORK waits until it has exec'd. */
	long flags = CLONE_NEWNET | SIGCHLD | (mode == H_EXEC ? CLONE_VFORK : 0);
	pid_t pid = syscall(SYS_clone, flags, 0, 0, 0, 0);
	if (pid < 0)
		die("clone(CLONE_NEWNET)", errno);
	if (pid == 0) {
		if (mode == H_EXEC) {
			execl(pause_path, "pause", (char *)0);
			_exit(127);
		}
		for (;;)
			pause();
	}
	if (mode == H_EXEC && waitpid(pid, 0, WNOHANG) == pid)
		die("exec $BENCH_PAUSE", ENOEXEC);
	s->pid = pid;
	snprintf(path, sizeof path, "/proc/%d/ns/net", pid);
	s->nsfd = open(path, O_RDONLY | O_CLOEXEC);
	if (s->nsfd < 0 || setns(s->nsfd, CLONE_NEWNET))
		die("enter holder netns", errno);
	s->nl = nl_socket();
	if (setns(host_ns, CLONE_NEWNET))
		die("setns(host)", errno);
}

static void create(int i, int host_nl)
{
	struct sandbox *s = &sb[i];
	char name[IFNAMSIZ];
	struct req r = {0};
	int err;

	make_netns(s);
	snprintf(name, sizeof name, "pnb%d", i);

	/* host side: veth pnbI (master bridge, up) + peer eth0 (ifindex 2, up) in the netns */
	struct ifinfomsg up = {.ifi_family = AF_UNSPEC, .ifi_flags = IFF_UP, .ifi_change = IFF_UP};
	struct nlmsghdr *h = msg_begin(&r, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, &up, sizeof up);
	attr(h, IFLA_IFNAME, name, strlen(name) + 1);
	attr(h, IFLA_MASTER, &bridge_index, 4);
	struct rtattr *info = attr(h, IFLA_LINKINFO, 0, 0);
	attr(h, IFLA_INFO_KIND, "veth", 5);
	struct rtattr *data = attr(h, IFLA_INFO_DATA, 0, 0);
	struct rtattr *peer = attr(h, VETH_INFO_PEER, 0, 0);
	struct ifinfomsg pup = {.ifi_family = AF_UNSPEC, .ifi_index = 2}; /* lo is 1 in a fresh netns */
	memcpy((char *)h + h->nlmsg_len, &pup, sizeof pup);
	h->nlmsg_len += NLMSG_ALIGN(sizeof pup);
	attr(h, IFLA_IFNAME, "eth0", 5);
	attr(h, IFLA_NET_NS_FD, &s->nsfd, 4);
	nest_end(h, peer);
	nest_end(h, data);
	nest_end(h, info);
	msg_end(&r, h);
	if ((err = talk(host_nl, &r)))
		die("RTM_NEWLINK veth", err);

	/* inside: lo up, eth0 up, eth0 address, default route - one sendmsg */
	r = (struct req){0};
	struct ifinfomsg lo = up, eth0 = up;
	lo.ifi_index = 1;
	eth0.ifi_index = 2;
	msg_end(&r, msg_begin(&r, RTM_NEWLINK, 0, &lo, sizeof lo));
	msg_end(&r, msg_begin(&r, RTM_NEWLINK, 0, &eth0, sizeof eth0));

	uint32_t ip = htonl(subnet_base + 2 + i); /* same order as host-local: .2, .3, ... */
	struct ifaddrmsg a = {.ifa_family = AF_INET, .ifa_prefixlen = prefix, .ifa_index = 2};
	h = msg_begin(&r, RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, &a, sizeof a);
	attr(h, IFA_LOCAL, &ip, 4);
	attr(h, IFA_ADDRESS, &ip, 4);
	msg_end(&r, h);

	struct rtmsg rt = {.rtm_family = AF_INET, .rtm_table = RT_TABLE_MAIN, .rtm_protocol = RTPROT_BOOT,
			   .rtm_scope = RT_SCOPE_UNIVERSE, .rtm_type = RTN_UNICAST};
	h = msg_begin(&r, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, &rt, sizeof rt);
	attr(h, RTA_GATEWAY, &gateway, 4);
	int oif = 2;
	attr(h, RTA_OIF, &oif, 4);
	msg_end(&r, h);
	if ((err = talk(s->nl, &r)))
		die("address/route in netns", err);
}

static void teardown(int i, int host_nl)
{
	struct sandbox *s = &sb[i];
	char name[IFNAMSIZ];
	struct req r = {0};
	struct ifinfomsg any = {.ifi_family = AF_UNSPEC};
	int err;

	snprintf(name, sizeof name, "pnb%d", i);
	struct nlmsghdr *h = msg_begin(&r, RTM_DELLINK, 0, &any, sizeof any);
	attr(h, IFLA_IFNAME, name, strlen(name) + 1);
	msg_end(&r, h);
	if ((err = talk(host_nl, &r)))
		die("RTM_DELLINK", err);
	close(s->nl);
	close(s->nsfd);
	if (s->pid) {
		kill(s->pid, SIGKILL);
		waitpid(s->pid, 0, 0);
	}
}

/* ---- workers: C threads take sandbox indices from a shared counter ---- */

static void *worker(void *phase)
{
	int host_nl = nl_socket();
	void (*fn)(int, int) = phase;
	double *out = fn == create ? create_ms : teardown_ms;
	for (int i; (i = atomic_fetch_add(&next_index, 1)) < n;) {
		double t0 = now_ms();
		fn(i, host_nl);
		out[i] = now_ms() - t0;
	}
	close(host_nl);
	return 0;
}

static double run_phase(void (*fn)(int, int))
{
	pthread_t t[256];
	double t0 = now_ms();
	atomic_store(&next_index, 0);
	for (int k = 0; k < c; k++)
		if ((errno = pthread_create(&t[k], 0, worker, (void *)fn)))
			die("pthread_create", errno);
	for (int k = 0; k < c; k++)
		pthread_join(t[k], 0);
	return now_ms() - t0;
}

static void print_list(const char *key, double *v)
{
	printf("\"%s\":[", key);
	for (int i = 0; i < n; i++)
		printf("%s%.3f", i ? "," : "", v[i]);
	printf("]");
}

int main(int argc, char **argv)
{
	static const char *names[] = {"fd", "fork", "exec"};
	char subnet[64], *slash;
	int a = 1;

	if (argc > 2 && !strcmp(argv[1], "--holder")) {
		for (mode = H_FD; mode <= H_EXEC && strcmp(argv[2], names[mode]); mode++)
			;
		a = 3;
	}
	if (mode > H_EXEC || argc <= a) {
		fprintf(stderr, "usage: floor [--holder fd|fork|exec] N [C]\n");
		return 2;
	}
	n = atoi(argv[a]);
	if (argc > a + 1)
		c = atoi(argv[a + 1]);
	if (c < 1 || c > 256)
		c = 1;
	const char *br = getenv("BENCH_BRIDGE") ?: "podnetbench0";
	snprintf(subnet, sizeof subnet, "%s", getenv("BENCH_SUBNET") ?: "10.88.0.0/16");
	pause_path = getenv("BENCH_PAUSE");
	if (!(slash = strchr(subnet, '/')))
		die("BENCH_SUBNET", EINVAL);
	*slash = 0;
	prefix = atoi(slash + 1);
	struct in_addr base;
	if (!inet_pton(AF_INET, subnet, &base) || !inet_pton(AF_INET, getenv("BENCH_GW") ?: "10.88.0.1", &gateway))
		die("BENCH_SUBNET/BENCH_GW", EINVAL);
	subnet_base = ntohl(base.s_addr);
	if (mode == H_EXEC && !pause_path)
		die("--holder exec needs $BENCH_PAUSE", EINVAL);
	if (!(bridge_index = if_nametoindex(br)))
		die(br, errno);
	if ((host_ns = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC)) < 0)
		die("open host netns", errno);
	sb = calloc(n, sizeof *sb);
	create_ms = calloc(n, sizeof(double));
	teardown_ms = calloc(n, sizeof(double));

	double create_wall = run_phase(create);
	const char *check = getenv("BENCH_CHECK");
	if (check) {
		char cmd[512];
		snprintf(cmd, sizeof cmd, "%s %d", check, n);
		if (system(cmd))
			die("BENCH_CHECK failed", EIO);
	}
	double teardown_wall = run_phase(teardown);

	printf("{\"peer\":\"%s\",\"n\":%d,\"c\":%d,", getenv("BENCH_PEER") ?: "floor", n, c);
	print_list("create_ms", create_ms);
	putchar(',');
	print_list("teardown_ms", teardown_ms);
	printf(",\"create_wall_ms\":%.3f,\"teardown_wall_ms\":%.3f,\"holder\":\"%s\"}\n", create_wall,
	       teardown_wall, names[mode]);
	return 0;
}
