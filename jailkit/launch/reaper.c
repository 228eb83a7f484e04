/*
 * jailkit-reaper: the only jailkit code that stays resident while a jail runs.
 *
 * A resident CPython costs about 5 MB per jail, so once Python has confined the jail it execs
 * this small static program (static: it is exec'd from an fd inside the jail, where no host
 * loader or libc can be trusted to exist). Modes init and adopt inside the pid namespace, wait
 * outside it:
 *
 *   jailkit-reaper init STOPSIG DROPCAPS CMD [ARG...]
 *       pid 1 of the jail. Starts CMD, forwards every signal it gets to it (SIGTERM becomes the
 *       profile's stop signal), reaps orphans, and exits with CMD's status (128+N for signal N).
 *       A service as pid 1 would ignore signals it has no handler for and reap children it
 *       does not know (vsftpd segfaults). pid 1 holds CAP_KILL, so that it can still signal a
 *       service that switched to another user; DROPCAPS (a bit mask) are the capabilities it
 *       holds only for itself: CMD's process drops them from every set before the exec (with
 *       no_new_privs set, the exec cannot give them back).
 *
 *   jailkit-reaper adopt STOPSIG PID [--syslog FD] [--report FD]
 *       pid 1 of the jail, as init, for a service that pid 1 started before exec'ing this
 *       (its own child PID, in a nested user namespace) rather than one it forks itself. This
 *       is what the launcher uses (contain.py); pid 1 then holds CAP_KILL alone. --syslog FD is
 *       the jail's /dev/log (a datagram socket, mounts.py): each message becomes one line on
 *       pid 1's stderr (the detached jail's log, or the caller's terminal), "syslog
 *       FACILITY.SEVERITY: TAG[PID]: TEXT", control characters made spaces (a message cannot
 *       forge a line), at most SYSLOG_RATE a second: the others are counted and reported.
 *       --report FD: a pipe to the waiter, on which pid 1 writes the service's wait status
 *       (an int) when it has ended: only pid 1 can tell "killed by signal N" from "exited with
 *       status 128+N", which is all its own exit status can say.
 *
 *   jailkit-reaper wait PID [--pty FD | --pty-interactive FD | --pty-terminal FD | --log FD]
 *                  [--cgroup DIR]... [--veth NAME] [--publish FD:ADDR:PORT]...
 *                  [--registry DIRFD [--entry FILE] [--log-name FILE --log-cap N]]
 *                  [--report FD] [--early-hint TEXT]
 *       the launcher, outside. Forwards signals to PID (the jail's pid 1), exits with its status
 *       and then removes what the launcher made on the host for this jail: its cgroups, its
 *       veth, and last its entry FILE in the registry directory DIRFD (launch/registry.py),
 *       whose lock it holds (an inherited descriptor) while it runs. With --pty, FD is
 *       the master of the pty the jail has in place of the caller's terminal (launch/stdio.py):
 *       its output is copied to the caller's terminal, and with --pty-interactive the caller's
 *       stdin to it (end of input becomes the pty's end-of-file character). --pty-terminal is
 *       --pty-interactive on the caller's terminal, as `ssh -t`: that terminal is raw while
 *       the jail runs and restored when it has exited, and a SIGWINCH (the caller's terminal
 *       was resized) sets the new size on the master instead of being forwarded. With --log (a
 *       detached jail), FD is the read end of the pipe that is the jail's stdout and stderr:
 *       each line goes to DIRFD/FILE with a UTC timestamp, and once FILE holds N bytes it is
 *       renamed FILE.1 (replacing the previous one) and a new FILE begun: at most 2N bytes.
 *       Its last line says how the service ended (log_end): pid 1's report (--report FD, the
 *       read end of adopt's), else pid 1's own status, and the kills of the kernel's OOM
 *       killer that the jail's cgroups counted.
 *       With --publish, FD listens on the host, and a child of the waiter relays each
 *       connection it accepts to ADDR:PORT, the jail's own address (see start_publishing).
 *       With --early-hint, a jail that exits with a failure status within EARLY_SECONDS of
 *       its start, no signal of the caller's passed on, ends with one line saying so and TEXT
 *       (the command that explains it: `jailkit doctor PROFILE --root DIR`).
 *
 *   jailkit-reaper prime
 *       the launcher's helper, as root, before it plans: moves itself into its own cgroup and
 *       exits, so that the kernel's wait before a first cgroup move is over by the time the
 *       jail's is made (docs/kernel-notes.md, "Control groups"). The waiter reaps it.
 *
 * All block the signals they forward and take them with sigwaitinfo(): a blocked signal is
 * queued even for a pid-namespace init, and nothing runs in a signal handler.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <grp.h>
#include <stddef.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <linux/audit.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

static int status_code(int status)
{
	if (WIFEXITED(status))
		return WEXITSTATUS(status);
	if (WIFSIGNALED(status))
		return 128 + WTERMSIG(status);
	return 255;
}

/* Every signal but the ones that report a fault in this process (those must stay deliverable). */
static void forwarded_set(sigset_t *set)
{
	static const int faults[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGABRT, SIGSYS};
	sigfillset(set);
	for (size_t i = 0; i < sizeof(faults) / sizeof(faults[0]); i++)
		sigdelset(set, faults[i]);
}

/* Bounding first (CAP_SETPCAP, itself maybe among them, goes last), then the other sets. */
static int drop_capabilities(unsigned long long drop)
{
	for (int cap = 0; cap < 64; cap++)
		if (((drop >> cap) & 1) && cap != CAP_SETPCAP && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0))
			return -1;
	if (((drop >> CAP_SETPCAP) & 1) && prctl(PR_CAPBSET_DROP, CAP_SETPCAP, 0, 0, 0))
		return -1;
	struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
	struct __user_cap_data_struct data[2];
	if (syscall(SYS_capget, &header, data))
		return -1;
	for (int i = 0; i < 2; i++) {
		__u32 keep = ~(__u32)(drop >> (32 * i));
		data[i].effective &= keep;
		data[i].permitted &= keep;
		data[i].inheritable &= keep;
	}
	return syscall(SYS_capset, &header, data) ? -1 : 0; /* ambient follows inheritable */
}

/* As pid 1: forward signals to `child` (SIGTERM as `stop_signal`), reap every orphan, and
 * return `child`'s wait status once it exits. */
static int supervise(pid_t child, int stop_signal)
{
	sigset_t set;
	forwarded_set(&set);
	for (;;) {
		siginfo_t info;
		int sig = sigwaitinfo(&set, &info);
		if (sig < 0)
			continue; /* EINTR */
		if (sig == SIGCHLD) {
			int status;
			pid_t pid;
			while ((pid = waitpid(-1, &status, WNOHANG)) > 0)
				if (pid == child)
					return status; /* the kernel kills the rest of the jail */
			continue;
		}
		kill(child, sig == SIGTERM ? stop_signal : sig);
	}
}

static void write_all(int fd, const char *buf, ssize_t len);

#define SYSLOG_RATE 100 /* messages a second; a flood costs the relay nothing more */
#define SYSLOG_LINE 1024

struct syslog_relay {
	int fd;
	long second, sent, dropped;
};

static void syslog_emit(const char *line, size_t len)
{
	/* never block pid 1 on a full pipe or a stopped terminal: drop instead */
	struct pollfd out = {2, POLLOUT, 0};
	if (poll(&out, 1, 0) == 1 && (out.revents & POLLOUT))
		write_all(2, line, (ssize_t)len);
}

/* Report what was dropped in the second that ended, and start counting a new one. */
static void syslog_tick(struct syslog_relay *relay)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	if (now.tv_sec == relay->second)
		return;
	if (relay->dropped) {
		char note[96];
		int n = snprintf(note, sizeof(note), "jailkit: %ld syslog messages dropped (more than "
				 "%d a second)\n", relay->dropped, SYSLOG_RATE);
		syslog_emit(note, (size_t)n);
	}
	relay->second = now.tv_sec;
	relay->sent = relay->dropped = 0;
}

/* One queued message to stderr; 0 when none was queued. */
static int syslog_relay_one(struct syslog_relay *relay)
{
	static const char *const facilities[] = {
		"kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron",
		"authpriv", "ftp", "ntp", "security", "console", "cron2", "local0", "local1",
		"local2", "local3", "local4", "local5", "local6", "local7"};
	static const char *const severities[] = {"emerg", "alert", "crit", "err", "warning",
						  "notice", "info", "debug"};
	char msg[SYSLOG_LINE], line[SYSLOG_LINE + 64];
	ssize_t len = recv(relay->fd, msg, sizeof(msg) - 1, MSG_DONTWAIT);
	if (len <= 0)
		return 0;
	syslog_tick(relay);
	if (relay->sent >= SYSLOG_RATE) {
		relay->dropped++;
		return 1;
	}
	relay->sent++;
	msg[len] = 0;
	char *text = msg;
	int pri = 13; /* user.notice, as syslog(3) without one */
	if (text[0] == '<') {
		char *end;
		long value = strtol(text + 1, &end, 10);
		if (*end == '>' && value >= 0 && value < 24 * 8) {
			pri = (int)value;
			text = end + 1;
		}
	}
	/* syslog(3)'s "Mmm dd hh:mm:ss ": the log line has its own time */
	if (strlen(text) > 16 && text[3] == ' ' && text[6] == ' ' && text[9] == ':' &&
	    text[12] == ':' && text[15] == ' ')
		text += 16;
	size_t n = strlen(text);
	while (n && (text[n - 1] == '\n' || text[n - 1] == ' '))
		n--;
	int head = snprintf(line, sizeof(line), "syslog %s.%s: ", facilities[pri >> 3],
			    severities[pri & 7]);
	for (size_t i = 0; i < n; i++)
		line[head + i] = (unsigned char)text[i] < 0x20 || text[i] == 0x7f ? ' ' : text[i];
	line[head + n] = '\n';
	syslog_emit(line, head + n + 1);
	return 1;
}

/* supervise(), also relaying /dev/log: signals come through a signalfd, polled with it. */
static int supervise_relaying(pid_t child, int stop_signal, int syslog_fd)
{
	sigset_t set;
	forwarded_set(&set);
	int sfd = signalfd(-1, &set, SFD_CLOEXEC);
	if (sfd < 0) {
		close(syslog_fd);
		return supervise(child, stop_signal);
	}
	struct syslog_relay relay = {syslog_fd, 0, 0, 0};
	struct pollfd fds[2] = {{sfd, POLLIN, 0}, {syslog_fd, POLLIN, 0}};
	for (;;) {
		/* wake once a second while something dropped waits to be reported */
		if (poll(fds, 2, relay.dropped ? 1000 : -1) < 0)
			continue; /* EINTR */
		if (fds[1].revents & POLLIN)
			while (syslog_relay_one(&relay))
				; /* bounded by the socket's queue (net.unix.max_dgram_qlen) */
		else if (relay.dropped)
			syslog_tick(&relay);
		if (!(fds[0].revents & POLLIN))
			continue;
		struct signalfd_siginfo info;
		if (read(sfd, &info, sizeof(info)) != sizeof(info))
			continue;
		int sig = (int)info.ssi_signo;
		if (sig == SIGCHLD) {
			int status;
			pid_t pid;
			while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
				if (pid != child)
					continue;
				while (syslog_relay_one(&relay))
					; /* what it sent just before it exited */
				relay.second = -1;
				syslog_tick(&relay); /* and what was dropped */
				return status;
			}
			continue;
		}
		kill(child, sig == SIGTERM ? stop_signal : sig);
	}
}

static int run_init(int argc, char **argv)
{
	if (argc < 5) {
		fprintf(stderr, "usage: jailkit-reaper init STOPSIG DROPCAPS CMD [ARG...]\n");
		return 2;
	}
	int stop_signal = atoi(argv[2]);
	unsigned long long drop = strtoull(argv[3], NULL, 10);
	sigset_t empty;
	sigemptyset(&empty);
	/* The jail must die with its launcher; set again here because exec may have cleared it. */
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	pid_t child = fork();
	if (child < 0) {
		perror("jailkit: fork");
		return 125;
	}
	if (child == 0) {
		sigprocmask(SIG_SETMASK, &empty, NULL);
		if (drop_capabilities(drop)) {
			perror("jailkit: dropping pid 1's own capabilities");
			_exit(125);
		}
		execvp(argv[4], argv + 4);
		int err = errno;
		fprintf(stderr, "jailkit: cannot run %s in the jail: %s\n", argv[4], strerror(err));
		_exit(err == ENOENT ? 127 : 126);
	}
	return status_code(supervise(child, stop_signal));
}

static int run_adopt(int argc, char **argv)
{
	int syslog_fd = -1, report_fd = -1, usage = argc < 4 || argc % 2;
	for (int i = 4; !usage && i + 1 < argc; i += 2) {
		if (strcmp(argv[i], "--syslog") == 0)
			syslog_fd = atoi(argv[i + 1]);
		else if (strcmp(argv[i], "--report") == 0)
			report_fd = atoi(argv[i + 1]);
		else
			usage = 1;
	}
	if (usage) {
		fprintf(stderr, "usage: jailkit-reaper adopt STOPSIG PID [--syslog FD] [--report FD]\n");
		return 2;
	}
	prctl(PR_SET_PDEATHSIG, SIGKILL); /* as in init: exec may have cleared it */
	/* exec'd from a memfd, the kernel names us after it ("memfd:jailkit-r"): our own name */
	prctl(PR_SET_NAME, "jailkit-reaper");
	/* a SIGCHLD of a child that already exited is pending (blocked since before the exec) */
	pid_t child = (pid_t)atol(argv[3]);
	int status = syslog_fd >= 0 ? supervise_relaying(child, atoi(argv[2]), syslog_fd)
				    : supervise(child, atoi(argv[2]));
	if (report_fd >= 0)
		write_all(report_fd, (const char *)&status, sizeof(status));
	return status_code(status);
}

static void run_quietly(char *const argv[])
{
	pid_t pid = fork();
	if (pid == 0) {
		int null = open("/dev/null", O_RDWR);
		dup2(null, 1);
		dup2(null, 2);
		execv(argv[0], argv);
		_exit(127);
	}
	if (pid > 0)
		waitpid(pid, NULL, 0);
}

/* A cgroup is busy for a moment after its last task exits; bounded retries (2 s in all). */
static void remove_cgroup(const char *dir)
{
	struct timespec pause = {0, 10 * 1000 * 1000};
	for (int i = 0; i < 200; i++) {
		if (rmdir(dir) == 0 || errno == ENOENT)
			return;
		if (errno != EBUSY)
			break;
		nanosleep(&pause, NULL);
	}
	fprintf(stderr, "jailkit: could not remove cgroup %s: %s\n", dir, strerror(errno));
}

static pid_t publisher = -1; /* the waiter's child relaying published ports, while it lives */
static int signalled;        /* the waiter passed the jail a signal of the caller's */

/* Forward signal `sig` to the jail; -1 while it runs, its wait status once it has exited.
 * Any other child (the launcher's `prime` process, a relay that crashed) is reaped too. */
static int forward(pid_t jail, int sig)
{
	int status;
	pid_t pid;
	if (sig != SIGCHLD) {
		signalled |= sig != SIGWINCH;
		kill(jail, sig);
	} else
		while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
			if (pid == jail)
				return status;
			if (pid == publisher)
				publisher = -1; /* reaped: its pid must not be signalled again */
		}
	return -1;
}

/* A child the launcher started before it blocked signals (its `prime` process) may have ended
 * unseen, its SIGCHLD discarded: reap those, leaving the jail's own status to forward(). */
static void reap_others(pid_t jail)
{
	for (;;) {
		siginfo_t info = {0};
		if (waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT) || info.si_pid == 0 ||
		    info.si_pid == jail)
			return;
		waitpid(info.si_pid, NULL, 0);
	}
}

static void write_all(int fd, const char *buf, ssize_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return;
		buf += n;
		len -= n;
	}
}

enum pty_mode { PTY_OUTPUT, PTY_INTERACTIVE, PTY_TERMINAL };

/* The caller's terminal (stdin) raw, as `ssh -t` makes it: every key reaches the jail's pty as
 * a byte, where the jail's own line discipline echoes, edits lines and makes ^C and ^Z
 * signals for the jail's foreground group; nothing is echoed or signalled here. 0 once the
 * modes are saved in `saved` and changed. */
static int enter_raw_mode(struct termios *saved)
{
	if (tcgetattr(0, saved))
		return -1;
	struct termios raw = *saved;
	raw.c_iflag |= IGNPAR;
	raw.c_iflag &= ~(ISTRIP | INLCR | IGNCR | ICRNL | IXON | IXANY | IXOFF | IUCLC);
	raw.c_lflag &= ~(ISIG | ICANON | ECHO | ECHOE | ECHOK | ECHONL | IEXTEN);
	raw.c_oflag &= ~OPOST; /* the jail's pty already turned its newlines into CR LF */
	raw.c_cc[VMIN] = 1;
	raw.c_cc[VTIME] = 0;
	return tcsetattr(0, TCSADRAIN, &raw);
}

/* The caller's terminal was resized: the jail's pty takes its size, and the kernel then sends
 * SIGWINCH to the pty's foreground process group (the jail's own, not its pid 1). */
static void pass_window_size(int pty)
{
	struct winsize size;
	if (ioctl(0, TIOCGWINSZ, &size) == 0)
		ioctl(pty, TIOCSWINSZ, &size);
}

/*
 * Forward signals while relaying between the caller's terminal and the jail's pty master.
 * Input waits in `pending` while the jail does not read (the master is non-blocking), so the
 * waiter never blocks on the jail and always forwards signals. PTY_TERMINAL: the caller's
 * terminal is raw from here until the jail has exited, whatever ended it (its own exit, a
 * signal forwarded to it, a kill from outside: each ends here as its exit status); only a
 * SIGKILL of the waiter itself leaves it raw (`stty sane` restores it).
 */
static int relay(pid_t jail, const sigset_t *set, int pty, enum pty_mode mode)
{
	int sfd = signalfd(-1, set, SFD_CLOEXEC);
	if (sfd < 0) {
		perror("jailkit: signalfd (the jail's terminal output is not relayed)");
		return -1;
	}
	struct termios saved;
	int raw = mode == PTY_TERMINAL && enter_raw_mode(&saved) == 0;
	int relay_input = mode != PTY_OUTPUT;
	fcntl(pty, F_SETFL, fcntl(pty, F_GETFL) | O_NONBLOCK);
	int out = isatty(1) ? 1 : isatty(2) ? 2 : 1;
	char buf[4096], pending[4096];
	ssize_t npending = 0;
	struct pollfd fds[3] = {{sfd, POLLIN, 0}, {pty, POLLIN, 0}, {relay_input ? 0 : -1, POLLIN, 0}};
	int status = -1, input_open = relay_input;
	while (status < 0) {
		fds[1].events = POLLIN | (npending ? POLLOUT : 0);
		fds[2].fd = input_open && !npending ? 0 : -1;
		if (poll(fds, 3, -1) < 0)
			continue; /* EINTR */
		if (fds[0].revents & POLLIN) {
			struct signalfd_siginfo info;
			if (read(sfd, &info, sizeof(info)) == sizeof(info)) {
				int sig = (int)info.ssi_signo;
				if (mode == PTY_TERMINAL && sig == SIGWINCH)
					pass_window_size(pty);
				else
					status = forward(jail, sig);
			}
		}
		if (fds[1].revents & (POLLIN | POLLHUP | POLLERR)) {
			ssize_t n = read(pty, buf, sizeof(buf));
			if (n > 0) {
				write_all(out, buf, n);
			} else if (n == 0 || errno != EAGAIN) {
				/* EIO: no slave left open; only the jail's exit remains to wait for */
				fds[1].fd = -1;
				input_open = 0;
				npending = 0;
			}
		}
		if (npending && fds[1].revents & POLLOUT) {
			ssize_t n = write(pty, pending, npending);
			if (n > 0) {
				memmove(pending, pending + n, npending - n);
				npending -= n;
			}
		}
		if (fds[2].fd >= 0 && fds[2].revents) {
			npending = read(0, pending, sizeof(pending));
			if (npending <= 0) { /* end of input: the pty's VEOF (^D) ends the jail's read */
				pending[0] = 4;
				npending = 1;
				input_open = 0;
			}
		}
	}
	ssize_t n; /* what the service wrote just before it exited */
	while ((n = read(pty, buf, sizeof(buf))) > 0)
		write_all(out, buf, n);
	if (raw)
		tcsetattr(0, TCSADRAIN, &saved);
	return status;
}

struct log {
	int dir, fd, at_line_start;
	const char *name;
	long long cap, size;
};

/* "2026-12-01T08:10:24.108Z " by hand: gmtime and strftime would add ~150 KB of glibc's
 * locale and time zone code to this static binary, which each jail's pid 1 holds a copy of. */
static int utc_stamp(char *out, size_t size)
{
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	long long days = now.tv_sec / 86400, secs = now.tv_sec % 86400;
	/* days since 1970-01-01 to a civil date (H. Hinnant's days_from_civil, inverted) */
	days += 719468;
	long long era = days / 146097, doe = days - era * 146097;
	long long yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	long long doy = doe - (365 * yoe + yoe / 4 - yoe / 100), mp = (5 * doy + 2) / 153;
	long long day = doy - (153 * mp + 2) / 5 + 1, month = mp < 10 ? mp + 3 : mp - 9;
	long long year = yoe + era * 400 + (month <= 2);
	return snprintf(out, size, "%04lld-%02lld-%02lldT%02lld:%02lld:%02lld.%03ldZ ", year, month,
			day, secs / 3600, secs / 60 % 60, secs % 60, now.tv_nsec / 1000000);
}

static void log_open(struct log *log)
{
	/* the registry directory is the caller's alone (checked by the launcher); never follow */
	log->fd = openat(log->dir, log->name, O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_CLOEXEC,
			 0600);
	struct stat st;
	log->size = log->fd >= 0 && fstat(log->fd, &st) == 0 ? st.st_size : 0;
}

static void log_rotate(struct log *log)
{
	char old[300];
	if (log->fd >= 0)
		close(log->fd);
	snprintf(old, sizeof(old), "%s.1", log->name);
	renameat(log->dir, log->name, log->dir, old);
	log_open(log);
}

static void log_write(struct log *log, const char *buf, ssize_t len)
{
	while (len > 0) {
		if (log->at_line_start) {
			if (log->size >= log->cap)
				log_rotate(log);
			char stamp[40];
			int n = utc_stamp(stamp, sizeof(stamp));
			write_all(log->fd, stamp, n);
			log->size += n;
			log->at_line_start = 0;
		}
		const char *end = memchr(buf, '\n', len);
		ssize_t n = end ? end - buf + 1 : len;
		if (!end && log->size + n > log->cap + 4096) { /* a line without end: cut it */
			n = log->cap + 4096 - log->size > 0 ? log->cap + 4096 - log->size : 0;
			write_all(log->fd, buf, n);
			write_all(log->fd, "\n", 1);
			log->size += n + 1;
			log->at_line_start = 1;
			buf += n;
			len -= n;
			continue;
		}
		write_all(log->fd, buf, n);
		log->size += n;
		log->at_line_start = end != NULL;
		buf += n;
		len -= n;
	}
}

/* Forward signals while writing what the jail prints to its log (until the jail exits). */
static int log_relay(pid_t jail, const sigset_t *set, int pipe, struct log *log)
{
	int sfd = signalfd(-1, set, SFD_CLOEXEC);
	if (sfd < 0)
		return -1;
	log->at_line_start = 1;
	log_open(log);
	char buf[4096];
	struct pollfd fds[2] = {{sfd, POLLIN, 0}, {pipe, POLLIN, 0}};
	int status = -1;
	while (status < 0) {
		if (poll(fds, 2, -1) < 0)
			continue; /* EINTR */
		if (fds[0].revents & POLLIN) {
			struct signalfd_siginfo info;
			if (read(sfd, &info, sizeof(info)) == sizeof(info))
				status = forward(jail, (int)info.ssi_signo);
		}
		if (fds[1].revents & (POLLIN | POLLHUP | POLLERR)) {
			ssize_t n = read(pipe, buf, sizeof(buf));
			if (n > 0)
				log_write(log, buf, n);
			else if (n == 0 || errno != EINTR)
				fds[1].fd = -1; /* no writer left in the jail */
		}
	}
	fcntl(pipe, F_SETFL, fcntl(pipe, F_GETFL) | O_NONBLOCK);
	ssize_t n; /* what the service wrote just before it exited */
	while ((n = read(pipe, buf, sizeof(buf))) > 0)
		log_write(log, buf, n);
	return status;
}

/* "SIGTERM" for 15; a real-time signal by its number. */
static const char *signal_name(int sig, char *buf, size_t size)
{
	static const char *const names[] = {
		NULL, "SIGHUP", "SIGINT", "SIGQUIT", "SIGILL", "SIGTRAP", "SIGABRT", "SIGBUS",
		"SIGFPE", "SIGKILL", "SIGUSR1", "SIGSEGV", "SIGUSR2", "SIGPIPE", "SIGALRM", "SIGTERM",
		"SIGSTKFLT", "SIGCHLD", "SIGCONT", "SIGSTOP", "SIGTSTP", "SIGTTIN", "SIGTTOU", "SIGURG",
		"SIGXCPU", "SIGXFSZ", "SIGVTALRM", "SIGPROF", "SIGWINCH", "SIGIO", "SIGPWR", "SIGSYS"};
	if (sig > 0 && sig < (int)(sizeof(names) / sizeof(names[0])))
		return names[sig];
	snprintf(buf, size, "%d", sig);
	return buf;
}

/* The processes the kernel's OOM killer killed in the jail's cgroups: memory.events (v2) or
 * memory.oom_control (v1) of the first --cgroup DIR that has either, as `jailkit stats` reads. */
static long oom_kills(int argc, char **argv)
{
	static const char *const files[] = {"memory.events", "memory.oom_control"};
	for (int i = 3; i + 1 < argc; i += 2) {
		if (strcmp(argv[i], "--cgroup") != 0)
			continue;
		for (int f = 0; f < 2; f++) {
			char path[4200], text[1024];
			snprintf(path, sizeof(path), "%s/%s", argv[i + 1], files[f]);
			int fd = open(path, O_RDONLY | O_CLOEXEC);
			if (fd < 0)
				continue;
			ssize_t n = read(fd, text, sizeof(text) - 1);
			close(fd);
			text[n > 0 ? n : 0] = 0;
			char *line = strncmp(text, "oom_kill ", 9) == 0 ? text : strstr(text, "\noom_kill ");
			if (line)
				return atol(line + (*line == '\n') + 9);
		}
	}
	return 0;
}

/* The log's last line: how the service ended. From pid 1's report of its wait status; without
 * one, pid 1 itself ended first (its setup failed, or the whole jail was killed at once), and
 * its own status says how. A SIGKILL while the OOM killer killed in the jail is the OOM
 * killer's (it kills with SIGKILL, and counts each kill before the victim dies). */
static void log_end(struct log *log, int report, int jail_status, long oom)
{
	int status, reported = 0;
	if (report >= 0) {
		fcntl(report, F_SETFL, fcntl(report, F_GETFL) | O_NONBLOCK);
		reported = read(report, &status, sizeof(status)) == sizeof(status);
	}
	if (!reported)
		status = jail_status;
	const char *who = reported ? "the service" : "the jail";
	char line[256], name[16];
	int n;
	if (WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL && oom > 0) {
		n = snprintf(line, sizeof(line), "jailkit: %s was killed by the kernel's OOM killer "
			     "(out of memory in the jail's cgroup)", who);
		oom = 0;
	} else if (WIFSIGNALED(status)) {
		n = snprintf(line, sizeof(line), "jailkit: %s was killed by signal %s%s", who,
			     signal_name(WTERMSIG(status), name, sizeof(name)),
			     WCOREDUMP(status) ? " (core dumped)" : "");
	} else if (reported) {
		n = snprintf(line, sizeof(line), "jailkit: the service exited with status %d",
			     WEXITSTATUS(status));
	} else {
		n = snprintf(line, sizeof(line), "jailkit: the jail ended with status %d before its "
			     "service started", status_code(status));
	}
	if (oom > 0)
		n += snprintf(line + n, sizeof(line) - n, " (the kernel's OOM killer killed %ld of "
			      "its processes)", oom);
	line[n++] = '\n';
	if (!log->at_line_start)
		log_write(log, "\n", 1); /* the service's last line had no end */
	log_write(log, line, n);
}

/*
 * --publish FD:ADDR:PORT: FD is a listening socket the launcher bound on the host; each
 * connection it accepts is relayed to ADDR:PORT, the jail's veth address. The relay runs in a
 * child of the waiter, not in its loop: a fault in it ends the relay, never the jail (whose
 * pid 1 dies with the waiter), and the waiter's loops stay one thing each. The child dies with
 * the waiter (parent-death signal) or is killed by it when the jail has exited: the host ports
 * close with it.
 */
#define PUBLISH_MAX 64		/* listeners: `run` refuses more */
#define RELAY_CONNECTIONS 512	/* at once; more are refused (reset) until some end */
#define RELAY_PIPE 65536	/* capacity of the pipe each way per connection (see below) */
#define RELAY_SOCKET_BUFFER 131072 /* SO_RCVBUF/SO_SNDBUF of the relay's sockets (see below) */
#define RELAY_LINGER 10		/* seconds a client may keep a connection the service ended */
#define RELAY_ROUNDS 4		/* pipefuls moved each way per connection and wake-up */
#define ACCEPT_BURST 64		/* connections taken per listener per round */

struct listener {
	int fd;
	struct sockaddr_in to;
};

/* One direction of a connection: its pipe holds what was read from one side, not yet written
 * to the other (`len` bytes). */
struct flow {
	int pipe[2];
	size_t len;
	int eof, shut;
};

/* fd[0] the client's, fd[1] the jail's; flow[s] is read from fd[s] and written to fd[!s]. */
struct connection {
	int fd[2], connecting;
	struct flow flow[2];
	time_t ended; /* when the service's side ended while the client's goes on; else 0 */
};

static struct connection connections[RELAY_CONNECTIONS];
static int nconnections;

/* Close at once with a reset: the client learns there is nothing behind the port now. */
static void refuse(int fd)
{
	struct linger reset = {1, 0};
	setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset, sizeof(reset));
	close(fd);
}

/*
 * The relay's socket buffers are fixed: left to the kernel, a socket that is read fast grows its
 * receive buffer to MiBs (autotuning), and one whose peer does not read queues MiBs to send. A
 * client asking for a big file and never reading then pinned ~11 MiB of host kernel memory a
 * connection, outside the jail's cgroups: 512 connections starved every TCP socket of the host
 * (tcp_mem). Fixed, each socket holds at most twice this (the kernel doubles it, for overhead).
 * A receive buffer must be set before the connection is made (it fixes the window scale): on
 * the listeners for the accepted sockets, before connect() for the jail's.
 */
static void bound_buffers(int fd)
{
	int size = RELAY_SOCKET_BUFFER;
	setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
	setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
}

static time_t now_seconds(void)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return now.tv_sec + 1; /* never 0: 0 is "not ended" */
}

/*
 * The bytes go from socket to socket through a pipe each way (splice: the kernel moves the
 * pages, the relay never copies them), not a buffer of the relay's: 1 MiB answers went at
 * 0.34..0.38 of the direct rate with recv/send, two copies a byte. A pipe holds at most its
 * capacity, RELAY_PIPE, what the buffer held. Past fs.pipe-user-pages-soft (every process of
 * `nobody` counts) the kernel makes 2-page pipes and refuses to grow them: such a pipe stays
 * smaller, slower, still relaying. 0, or -1 with errno.
 */
static int open_pipe(int fds[2])
{
	if (pipe2(fds, O_NONBLOCK | O_CLOEXEC))
		return -1;
	fcntl(fds[1], F_SETPIPE_SZ, RELAY_PIPE);
	return 0;
}

/* Take one connection and start connecting to the jail: 1 when one was taken (or refused), 0
 * when none waits, -1 when accept() must wait (out of descriptors: the listener would poll
 * readable forever). */
static int relay_accept(const struct listener *l)
{
	int client = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
	if (client < 0)
		return errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM ? -1 : 0;
	if (nconnections == RELAY_CONNECTIONS) {
		refuse(client);
		return 1;
	}
	int jail = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (jail >= 0)
		bound_buffers(jail);
	bound_buffers(client); /* its send buffer: the receive buffer came from the listener */
	int pipes[2][2] = {{-1, -1}, {-1, -1}};
	int opened = jail >= 0 && !open_pipe(pipes[0]) && !open_pipe(pipes[1]);
	int started = opened ? connect(jail, (const struct sockaddr *)&l->to, sizeof(l->to)) : -1;
	if (started < 0 && (!opened || errno != EINPROGRESS)) {
		for (int i = 0; i < 4; i++)
			if (pipes[i / 2][i % 2] >= 0)
				close(pipes[i / 2][i % 2]);
		if (jail >= 0)
			close(jail);
		refuse(client);
		return 1;
	}
	int on = 1; /* a relay must not add Nagle's delay to a request/response exchange */
	setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
	setsockopt(jail, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
	struct connection *c = &connections[nconnections++];
	memset(c, 0, sizeof(*c));
	c->fd[0] = client;
	c->fd[1] = jail;
	c->connecting = started < 0;
	memcpy(c->flow[0].pipe, pipes[0], sizeof(pipes[0]));
	memcpy(c->flow[1].pipe, pipes[1], sizeof(pipes[1]));
	return 1;
}

/* `failed`: the client is reset; else both ways have ended, and close lets the last bytes go. */
static void relay_close(struct connection *c, int failed)
{
	if (failed)
		refuse(c->fd[0]);
	else
		close(c->fd[0]);
	close(c->fd[1]);
	for (int s = 0; s < 2; s++) {
		close(c->flow[s].pipe[0]);
		close(c->flow[s].pipe[1]);
	}
	*c = connections[--nconnections];
}

/* What to wait for on side `s` of a connection (0: nothing, then it is not polled). While the
 * connection to the jail is being made, the client's bytes wait in its socket. */
static short relay_events(const struct connection *c, int s)
{
	if (c->connecting)
		return s == 1 ? POLLOUT : 0;
	return (!c->flow[s].eof && !c->flow[s].len ? POLLIN : 0) | (c->flow[!s].len ? POLLOUT : 0);
}

/* Move one way of a connection (flow[s], fd[s] to fd[!s]) as far as it goes now, a few
 * pipefuls at most (the other connections wait meanwhile); -1 on an error. The pipe is filled
 * only once empty: then it has room for RELAY_PIPE bytes, and EAGAIN can only mean the socket
 * has nothing. An end of input is passed on (shutdown SHUT_WR) once what came before it is
 * written. */
static int relay_flow(struct connection *c, int s, int readable)
{
	struct flow *f = &c->flow[s];
	for (int round = 0; round < RELAY_ROUNDS; round++) {
		if (!f->len && !f->eof && readable) {
			ssize_t n = splice(c->fd[s], NULL, f->pipe[1], NULL, RELAY_PIPE,
					   SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
			if (n > 0) {
				f->len = (size_t)n;
			} else if (n == 0) {
				f->eof = 1;
			} else if (errno == EAGAIN || errno == EINTR) {
				readable = 0;
			} else {
				return -1;
			}
		}
		if (!f->len)
			break;
		ssize_t n = splice(f->pipe[0], NULL, c->fd[!s], NULL, f->len,
				   SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
		if (n < 0 && errno != EAGAIN && errno != EINTR)
			return -1;
		if (n > 0)
			f->len -= (size_t)n;
		if (f->len)
			break; /* the other side is full: wait until it can take more */
	}
	if (f->eof && !f->len && !f->shut) {
		shutdown(c->fd[!s], SHUT_WR);
		f->shut = 1;
	}
	return 0;
}

/*
 * 1 while the connection goes on, 0 once both ways have ended, -1 on an error. Once the
 * service's side has ended and all it sent is written, the client has RELAY_LINGER seconds to
 * end its own: without the bound, a client that never does held its connections, and the
 * relay's RELAY_CONNECTIONS, forever, however short the service's own timeouts (the kernel
 * bounds the like on a service's socket too: tcp_fin_timeout). A client that ends first waits
 * for the service as long as the service likes (a request, then a long answer).
 */
static int relay_step(struct connection *c, const struct pollfd p[2], time_t now)
{
	if (c->ended && now - c->ended >= RELAY_LINGER)
		return 0; /* closed, not reset: the client has had the service's end */
	if (!p[0].revents && !p[1].revents)
		return 1;
	if (c->connecting) {
		int err = 0;
		socklen_t len = sizeof(err);
		if (getsockopt(c->fd[1], SOL_SOCKET, SO_ERROR, &err, &len) || err)
			return -1; /* nothing listens in the jail (yet): the client is reset */
		c->connecting = 0;
	}
	for (int s = 0; s < 2; s++)
		if (relay_flow(c, s, (p[s].revents & (POLLIN | POLLHUP | POLLERR)) != 0) < 0)
			return -1;
	if (c->flow[1].shut && !c->flow[0].shut && !c->ended)
		c->ended = now;
	return !(c->flow[0].shut && c->flow[1].shut);
}

static _Noreturn void publish_loop(struct listener *listeners, int nlisteners)
{
	static struct pollfd fds[PUBLISH_MAX + 2 * RELAY_CONNECTIONS];
	int accepting = 1;
	for (;;) {
		int lingering = 0;
		for (int i = 0; i < nlisteners; i++) {
			fds[i].fd = accepting ? listeners[i].fd : -1;
			fds[i].events = POLLIN;
		}
		int polled = nconnections; /* connections accepted below are polled next round */
		for (int i = 0; i < polled; i++)
			for (int s = 0; s < 2; s++) {
				struct pollfd *p = &fds[nlisteners + 2 * i + s];
				p->events = relay_events(&connections[i], s);
				p->fd = p->events ? connections[i].fd[s] : -1;
			}
		for (int i = 0; i < polled; i++)
			lingering |= connections[i].ended != 0;
		/* out of descriptors: try accepting again in a moment; lingering: check each second */
		if (poll(fds, nlisteners + 2 * polled, !accepting ? 100 : lingering ? 1000 : -1) < 0)
			continue; /* EINTR */
		accepting = 1;
		time_t now = now_seconds();
		for (int i = polled - 1; i >= 0; i--) { /* backwards: a closed one takes the last's place */
			int going = relay_step(&connections[i], &fds[nlisteners + 2 * i], now);
			if (going <= 0)
				relay_close(&connections[i], going < 0);
		}
		for (int i = 0; i < nlisteners; i++)
			for (int n = 0; fds[i].revents & POLLIN && n < ACCEPT_BURST; n++) {
				int taken = relay_accept(&listeners[i]);
				if (taken < 0)
					accepting = 0;
				if (taken <= 0)
					break;
			}
	}
}

/* Close every descriptor but the listeners (the waiter's locks, the jail's pty or log pipe, the
 * caller's terminal: the relay holds nothing of the jail's run but its ports). */
static void keep_only(const struct listener *listeners, int nlisteners)
{
	int fds[PUBLISH_MAX];
	for (int i = 0; i < nlisteners; i++) { /* sorted, by insertion */
		int j = i;
		for (; j > 0 && fds[j - 1] > listeners[i].fd; j--)
			fds[j] = fds[j - 1];
		fds[j] = listeners[i].fd;
	}
	unsigned from = 0;
	for (int i = 0; i < nlisteners; i++) {
		if ((unsigned)fds[i] > from)
			syscall(SYS_close_range, from, (unsigned)fds[i] - 1, 0);
		from = (unsigned)fds[i] + 1;
	}
	syscall(SYS_close_range, from, ~0U, 0);
}

/*
 * The relay reads what any client sends: it keeps nothing of root's. It runs as nobody with no
 * capability (its listeners are bound, and the jail's address needs none to reach): a flaw in
 * it gives an attacker an unprivileged process. 0, or -1 with errno.
 */
static int drop_ids(void)
{
	if (geteuid() != 0)
		return 0;
	return setgroups(0, NULL) || setgid(65534) || setuid(65534) ? -1 : 0;
}

/* ... which cannot gain any (no_new_privs) and can make only the calls of its loop (seccomp);
 * fcntl only to size a pipe (F_SETPIPE_SZ). */
static int confine_relay(void)
{
	static const int allowed[] = {
		SYS_poll, SYS_accept4, SYS_socket, SYS_connect, SYS_setsockopt, SYS_getsockopt,
		SYS_pipe2, SYS_splice, SYS_shutdown, SYS_close, SYS_close_range,
		SYS_clock_gettime, SYS_exit_group, SYS_exit, SYS_rt_sigreturn, SYS_restart_syscall,
	};
	enum { N = sizeof(allowed) / sizeof(allowed[0]), LIST = 7 };
	struct sock_filter filter[LIST + N + 2] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		/* fcntl: its command (the low word of its second argument) decides */
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_fcntl, 0, 2),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[1])),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, F_SETPIPE_SZ, N + 1, N),
	};
	for (int i = 0; i < N; i++) /* a match jumps past the KILL below, to the ALLOW */
		filter[LIST + i] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K,
								(unsigned)allowed[i], (unsigned char)(N - i), 0);
	filter[LIST + N] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS);
	filter[LIST + N + 1] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
	struct sock_fprog program = {sizeof(filter) / sizeof(filter[0]), filter};
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
		return -1;
	return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program);
}

/* Fork the relay; the waiter keeps no listener open, so the ports close with the relay. */
static pid_t start_publishing(struct listener *listeners, int nlisteners)
{
	pid_t waiter = getpid();
	pid_t pid = fork();
	if (pid == 0) {
		if (drop_ids()) {
			perror("jailkit: the relay's change to nobody (the published ports are closed)");
			_exit(1);
		}
		prctl(PR_SET_PDEATHSIG, SIGKILL); /* after the change of ids, which clears it */
		if (getppid() != waiter)
			_exit(0); /* the waiter died before the line above */
		prctl(PR_SET_NAME, "jailkit-publish");
		signal(SIGPIPE, SIG_IGN); /* splice() has no MSG_NOSIGNAL: EPIPE will do */
		struct rlimit files; /* six descriptors a connection (two sockets, two pipes): 3072 */
		if (getrlimit(RLIMIT_NOFILE, &files) == 0) {
			files.rlim_cur = files.rlim_max;
			setrlimit(RLIMIT_NOFILE, &files);
		}
		for (int i = 0; i < nlisteners; i++) {
			fcntl(listeners[i].fd, F_SETFL, fcntl(listeners[i].fd, F_GETFL) | O_NONBLOCK);
			bound_buffers(listeners[i].fd);
		}
		if (confine_relay()) {
			perror("jailkit: the relay's seccomp filter (the published ports are closed)");
			_exit(1);
		}
		keep_only(listeners, nlisteners);
		publish_loop(listeners, nlisteners);
	}
	for (int i = 0; i < nlisteners; i++)
		close(listeners[i].fd);
	if (pid < 0)
		perror("jailkit: fork (the published ports are closed)");
	return pid;
}

/* "FD:ADDR:PORT" as a listener; 0 if it is not one. */
static int parse_publish(const char *arg, struct listener *l)
{
	char *end, addr[INET_ADDRSTRLEN];
	long fd = strtol(arg, &end, 10);
	const char *colon = *end == ':' ? strrchr(end + 1, ':') : NULL;
	if (end == arg || fd < 0 || !colon || colon - end - 1 >= (long)sizeof(addr))
		return 0;
	memcpy(addr, end + 1, (size_t)(colon - end - 1));
	addr[colon - end - 1] = 0;
	long port = strtol(colon + 1, &end, 10);
	if (end == colon + 1 || *end || port < 1 || port > 65535)
		return 0;
	memset(&l->to, 0, sizeof(l->to));
	l->fd = (int)fd;
	l->to.sin_family = AF_INET;
	l->to.sin_port = htons((uint16_t)port);
	return inet_pton(AF_INET, addr, &l->to.sin_addr) == 1;
}

/* A jail whose service failed on its own this soon after its start is one `jailkit doctor`
 * explains: its default run under the tracer lasts as long. */
#define EARLY_SECONDS 10

static long seconds_since(const struct timespec *start)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return (long)(now.tv_sec - start->tv_sec);
}

static int run_wait(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: jailkit-reaper wait PID [--pty FD | --pty-interactive FD | "
				"--pty-terminal FD | --log FD] [--cgroup DIR]... [--veth NAME] "
				"[--publish FD:ADDR:PORT]... [--registry DIRFD [--entry FILE] "
				"[--log-name FILE --log-cap N]] [--report FD]\n");
		return 2;
	}
	pid_t jail = (pid_t)atol(argv[2]);
	int pty = -1, log_pipe = -1, report = -1, nlisteners = 0;
	enum pty_mode pty_mode = PTY_OUTPUT;
	static struct listener listeners[PUBLISH_MAX];
	struct log log = {-1, -1, 1, NULL, 1 << 20, 0};
	const char *entry = NULL, *hint = NULL;
	struct timespec started;
	clock_gettime(CLOCK_MONOTONIC, &started);
	for (int i = 3; i + 1 < argc; i += 2) {
		if (strcmp(argv[i], "--pty") == 0 || strcmp(argv[i], "--pty-interactive") == 0 ||
		    strcmp(argv[i], "--pty-terminal") == 0) {
			pty = atoi(argv[i + 1]);
			pty_mode = strcmp(argv[i], "--pty-terminal") == 0      ? PTY_TERMINAL
				   : strcmp(argv[i], "--pty-interactive") == 0 ? PTY_INTERACTIVE
									       : PTY_OUTPUT;
		} else if (strcmp(argv[i], "--log") == 0) {
			log_pipe = atoi(argv[i + 1]);
		} else if (strcmp(argv[i], "--registry") == 0) {
			log.dir = atoi(argv[i + 1]);
		} else if (strcmp(argv[i], "--log-name") == 0) {
			log.name = argv[i + 1];
		} else if (strcmp(argv[i], "--log-cap") == 0) {
			log.cap = atoll(argv[i + 1]);
		} else if (strcmp(argv[i], "--entry") == 0) {
			entry = argv[i + 1];
		} else if (strcmp(argv[i], "--report") == 0) {
			report = atoi(argv[i + 1]);
		} else if (strcmp(argv[i], "--early-hint") == 0) {
			hint = argv[i + 1];
		} else if (strcmp(argv[i], "--publish") == 0) {
			if (nlisteners == PUBLISH_MAX || !parse_publish(argv[i + 1], &listeners[nlisteners]))
				fprintf(stderr, "jailkit: --publish %s: not FD:ADDR:PORT\n", argv[i + 1]);
			else
				nlisteners++;
		}
	}
	sigset_t set;
	forwarded_set(&set);
	sigprocmask(SIG_BLOCK, &set, NULL);
	reap_others(jail);
	if (nlisteners)
		publisher = start_publishing(listeners, nlisteners);
	int status = -1;
	if (pty >= 0)
		status = relay(jail, &set, pty, pty_mode);
	else if (log_pipe >= 0 && log.dir >= 0 && log.name)
		status = log_relay(jail, &set, log_pipe, &log);
	while (status < 0) {
		siginfo_t info;
		int sig = sigwaitinfo(&set, &info);
		if (sig >= 0)
			status = forward(jail, sig);
	}
	if (publisher > 0) { /* first: the host ports close as the jail ends */
		kill(publisher, SIGKILL);
		waitpid(publisher, NULL, 0);
	}
	if (log.fd >= 0) /* before its cgroups go, with their count of OOM kills */
		log_end(&log, report, status, oom_kills(argc, argv));
	for (int i = 3; i + 1 < argc; i += 2) {
		if (strcmp(argv[i], "--cgroup") == 0) {
			remove_cgroup(argv[i + 1]);
		} else if (strcmp(argv[i], "--veth") == 0) {
			/* Usually gone with the jail's network namespace already; deleting one end
			 * removes the pair, so this only closes the window of its asynchronous cleanup. */
			char *ip[] = {"/sbin/ip", "link", "delete", argv[i + 1], NULL};
			run_quietly(ip);
		}
	}
	/* last: once the entry is gone, a new run of this jail may make its cgroups again */
	if (entry && log.dir >= 0)
		unlinkat(log.dir, entry, 0);
	int code = status_code(status);
	if (hint && code != 0 && !signalled && seconds_since(&started) < EARLY_SECONDS)
		fprintf(stderr, "jailkit: the jail's service exited with status %d within %d s of its "
				"start; to see why: %s\n", code, EARLY_SECONDS, hint);
	return code;
}

/* Moves this process into the cgroup it is already in, so that the launcher's first real move
 * (of the jail) finds the kernel's cgroup_threadgroup_rwsem out of its idle state: the first
 * writer after a quiet moment waits for an RCU grace period (5-15 ms here), and this one waits
 * while Python is still planning. Any hierarchy will do: the lock is global. Errors are ignored:
 * the launcher's own move then waits instead. */
static int prime_at(const char *root, const char *controllers, const char *path)
{
	char procs[4200];
	snprintf(procs, sizeof(procs), "%s%s%s/cgroup.procs", root, controllers, path);
	int fd = open(procs, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	int written = dprintf(fd, "%d", (int)getpid());
	close(fd);
	return written > 0 ? 0 : -1;
}

static int run_prime(void)
{
	char line[4096];
	FILE *cgroups = fopen("/proc/self/cgroup", "r");
	if (!cgroups)
		return 0;
	while (fgets(line, sizeof(line), cgroups)) { /* ID:CONTROLLERS:PATH */
		line[strcspn(line, "\n")] = 0;
		char *controllers = strchr(line, ':'), *path;
		if (!controllers || !(path = strchr(++controllers, ':')))
			continue;
		*path++ = 0;
		if (*controllers == 0) { /* the unified hierarchy, on a hybrid host or alone */
			if (prime_at("/sys/fs/cgroup/unified", "", path) == 0 ||
			    prime_at("/sys/fs/cgroup", "", path) == 0)
				break;
		} else if (strncmp(controllers, "name=", 5) != 0) {
			if (prime_at("/sys/fs/cgroup/", controllers, path) == 0)
				break;
		}
	}
	fclose(cgroups);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc >= 2 && (strcmp(argv[1], "init") == 0 || strcmp(argv[1], "adopt") == 0)) {
		sigset_t set;
		forwarded_set(&set);
		sigprocmask(SIG_BLOCK, &set, NULL);
		return strcmp(argv[1], "init") == 0 ? run_init(argc, argv) : run_adopt(argc, argv);
	}
	if (argc >= 2 && strcmp(argv[1], "wait") == 0)
		return run_wait(argc, argv);
	if (argc >= 2 && strcmp(argv[1], "prime") == 0)
		return run_prime();
	fprintf(stderr, "usage: jailkit-reaper init|adopt|wait|prime ...\n");
	return 2;
}
