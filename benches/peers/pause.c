/* pause.c - a minimal sandbox holder: sleep until told to stop, reap orphans.
 *
 *   gcc -O2 -Wall -o /tmp/pause benches/peers/pause.c
 *   PAUSE_BIN=/tmp/pause cargo bench --bench holder_mem      # podnet's holder beside it
 *
 * run.sh builds it too, as $BENCH_PAUSE, the program floor-exec's holders exec.
 *
 * SIGINT/SIGTERM/SIGHUP: exit 0.  SIGCHLD: reap every finished child (it may be
 * PID 1 of a pid namespace, where orphans are re-parented to it).  Otherwise it
 * only pause()s, so its memory (RSS/PSS) is the floor for a holder process.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void quit(int sig) { _exit(sig == SIGINT || sig == SIGTERM || sig == SIGHUP ? 0 : 1); }

static void reap(int sig)
{
	(void)sig;
	while (waitpid(-1, 0, WNOHANG) > 0)
		;
}

int main(void)
{
	struct sigaction sa = {.sa_handler = quit};
	sigaction(SIGINT, &sa, 0);
	sigaction(SIGTERM, &sa, 0);
	sigaction(SIGHUP, &sa, 0);
	sa.sa_handler = reap;
	sa.sa_flags = SA_NOCLDSTOP | SA_RESTART;
	sigaction(SIGCHLD, &sa, 0);
	for (;;)
		pause();
}
