/*
 * Escape attempts and measurements run inside a jail by tests/test_launch*.py (static, so it
 * needs nothing from the jail). Each prints one line; the tests read the line, not the status,
 * unless said otherwise.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <grp.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

static int report(const char *what, int rc)
{
	printf("%s %s\n", what, rc == 0 ? "ok" : strerror(errno));
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 2)
		return 2;
	const char *cmd = argv[1];
	if (!strcmp(cmd, "ids")) {
		/* real and effective ids: a setuid file must not change the effective ones */
		printf("uid %d euid %d gid %d egid %d\n", getuid(), geteuid(), getgid(), getegid());
		return 0;
	}
	if (!strcmp(cmd, "become") && argc == 3) {
		/* switch to another id of the jail, as a service's master process drops to a worker */
		int id = atoi(argv[2]);
		if (setgroups(0, NULL) != 0 || setresgid(id, id, id) != 0 || setresuid(id, id, id) != 0)
			return report("become", -1);
		printf("uid %d euid %d gid %d egid %d\n", getuid(), geteuid(), getgid(), getegid());
		fflush(stdout);
		pause(); /* until the test has looked at it from the host */
		return 0;
	}
	if (!strcmp(cmd, "chroot-escape") && argc == 3) {
		/* the classic escape: chroot into a subdirectory, then climb out with chdir("..") */
		mkdir("/tmp/escape", 0755);
		if (chroot("/tmp/escape") != 0)
			return report("chroot", -1);
		for (int i = 0; i < 256; i++)
			chdir("..");
		chroot(".");
		struct stat st;
		printf("host file %s\n", stat(argv[2], &st) == 0 ? "visible" : "hidden");
		return 0;
	}
	if (!strcmp(cmd, "mount"))
		return report("mount", mount("none", "/tmp", "tmpfs", 0, NULL));
	if (!strcmp(cmd, "mknod"))
		return report("mknod", mknod("/tmp/null", S_IFCHR | 0666, makedev(1, 3)));
	if (!strcmp(cmd, "ptrace") && argc == 3)
		return report("ptrace", ptrace(PTRACE_ATTACH, atoi(argv[2]), 0, 0) == -1 ? -1 : 0);
	if (!strcmp(cmd, "kill") && argc == 3)
		return report("kill", kill(atoi(argv[2]), SIGTERM));
	if (!strcmp(cmd, "keyctl"))
		return report("keyctl", syscall(SYS_keyctl, 0 /* GET_KEYRING_ID */, -3, 0) == -1 ? -1 : 0);
	if (!strcmp(cmd, "unshare"))
		return report("unshare", unshare(0x10000000 /* CLONE_NEWUSER */));
	if (!strcmp(cmd, "clone-userns")) {
		/* the other way to a nested user namespace, not covered by a filter on unshare */
		pid_t pid = syscall(SYS_clone, 0x10000000 /* CLONE_NEWUSER */ | SIGCHLD, 0, 0, 0, 0);
		if (pid == 0)
			_exit(0);
		if (pid > 0)
			waitpid(pid, NULL, 0);
		return report("clone-userns", pid > 0 ? 0 : -1);
	}
	if (!strcmp(cmd, "write-fd") && argc == 4)
		return report("write-fd", write(atoi(argv[2]), argv[3], strlen(argv[3])) > 0 ? 0 : -1);
	if (!strcmp(cmd, "fds")) {
		/* every open descriptor above stderr */
		printf("fds");
		for (int fd = 3; fd < 4096; fd++)
			if (fcntl(fd, F_GETFD) != -1)
				printf(" %d", fd);
		printf("\n");
		return 0;
	}
	if (!strcmp(cmd, "hog") && argc == 3) {
		/* touch up to N MiB, at most: bounded even if the memory limit does not work */
		long limit = atol(argv[2]);
		for (long i = 0; i < limit; i++) {
			char *p = malloc(1 << 20);
			if (!p)
				break;
			memset(p, 1, 1 << 20);
		}
		printf("allocated %ld MiB\n", limit);
		return 0;
	}
	if (!strcmp(cmd, "forks") && argc == 3) {
		/* start up to N children that wait for us; the jail's end kills them */
		int n = atoi(argv[2]), made = 0;
		for (int i = 0; i < n; i++) {
			pid_t pid = fork();
			if (pid == 0) {
				pause();
				_exit(0);
			}
			if (pid < 0)
				break;
			made++;
		}
		printf("forked %d\n", made);
		return 0;
	}
	if (!strcmp(cmd, "serve") && argc == 3) {
		/* answer one TCP connection on PORT with "hello" */
		int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
		struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
		setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (bind(s, (struct sockaddr *)&addr, sizeof(addr)) != 0 || listen(s, 1) != 0)
			return report("bind", -1);
		printf("listening\n");
		fflush(stdout);
		int c = accept(s, NULL, NULL);
		write(c, "hello\n", 6);
		close(c);
		return 0;
	}
	if (!strcmp(cmd, "syscall") && argc == 3) {
		/* a syscall by number, with zero arguments: what the filter says about the number */
		long rc = syscall(atol(argv[2]), 0, 0, 0, 0, 0, 0);
		printf("syscall %s %s\n", argv[2], rc == -1 ? strerror(errno) : "ok");
		return 0;
	}
	if (!strcmp(cmd, "socket") && argc == 3) {
		/* a socket of address family N (SOCK_STREAM, or SOCK_DGRAM for netlink and packet) */
		int family = atoi(argv[2]);
		int s = socket(family, family == AF_NETLINK || family == AF_PACKET ? SOCK_DGRAM : SOCK_STREAM, 0);
		return report("socket", s < 0 ? -1 : 0);
	}
	if ((!strcmp(cmd, "bind-tcp") || !strcmp(cmd, "connect-tcp")) && argc == 3) {
		/* bind PORT on 127.0.0.1, or connect to 127.0.0.1:PORT */
		int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
		struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2])),
					   .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
		setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (cmd[0] == 'b')
			return report("bind-tcp", bind(s, (struct sockaddr *)&addr, sizeof(addr)));
		return report("connect-tcp", connect(s, (struct sockaddr *)&addr, sizeof(addr)));
	}
	if (!strcmp(cmd, "connect-abstract") && argc == 3) {
		/* connect to the abstract unix socket NAME (no leading NUL in the argument) */
		int s = socket(AF_UNIX, SOCK_STREAM, 0);
		struct sockaddr_un addr = {.sun_family = AF_UNIX};
		size_t len = strlen(argv[2]);
		memcpy(addr.sun_path + 1, argv[2], len);
		return report("connect-abstract",
			      connect(s, (struct sockaddr *)&addr, offsetof(struct sockaddr_un, sun_path) + 1 + len));
	}
	if (!strcmp(cmd, "pidfd-kill") && argc == 3)
		/* signal the process behind pidfd FD (one the caller passed in) */
		return report("pidfd-kill", syscall(SYS_pidfd_send_signal, atoi(argv[2]), SIGTERM, 0, 0));
	if (!strcmp(cmd, "tty")) {
		/* is stdin a terminal, and does it reach the one the caller has (compare rdev) */
		struct stat st;
		if (fstat(0, &st) != 0)
			return report("tty", -1);
		printf("stdin %s %lu\n", isatty(0) ? "tty" : S_ISCHR(st.st_mode) ? "chr" : "other",
		       (unsigned long)st.st_rdev);
		return 0;
	}
	if (!strcmp(cmd, "winsize")) {
		/* the window size of stdin's terminal; with "wait", again after the next SIGWINCH
		 * (blocked first: one that comes before the wait is not lost) */
		struct winsize size;
		sigset_t winch;
		sigemptyset(&winch);
		sigaddset(&winch, SIGWINCH);
		sigprocmask(SIG_BLOCK, &winch, NULL);
		if (ioctl(0, TIOCGWINSZ, &size) != 0)
			return report("winsize", -1);
		printf("winsize %u %u\n", size.ws_row, size.ws_col);
		fflush(stdout);
		if (argc == 3 && !strcmp(argv[2], "wait")) {
			struct timespec limit = {30, 0};
			if (sigtimedwait(&winch, NULL, &limit) != SIGWINCH)
				return report("sigwinch", -1);
			if (ioctl(0, TIOCGWINSZ, &size) != 0)
				return report("winsize", -1);
			printf("resized %u %u\n", size.ws_row, size.ws_col);
		}
		return 0;
	}
	return 2;
}
