"""Run a command as root on Debian 12's own kernel in a VM booted with cgroup v2 alone.

These machines run hybrid cgroup v1, so jailkit's cgroup v2 limits never meet a controller
here; test_debian_kernel.py runs them in this VM instead. The guest is Debian's
linux-image-6.1 kernel under qemu (TCG: see run) booted with `cgroup_no_v1=all`, and a small
initramfs made at each boot: busybox-static and the kernel's modules for 9p, overlayfs, virtio
and ext4. Its init mounts the host's / read-only over virtio-9p, under an overlay whose upper
layer is guest memory (the guest writes where it likes, never to the host), with fresh tmpfs on
/tmp and /run, proc, sysfs, devtmpfs, devpts and cgroup2 at /sys/fs/cgroup, and an ext4 image
of the caller's (a scratch disk, written in place) at the path the caller names; then it runs
the command under busybox's shell (pid 1, reaping orphans) and powers off. Or (systemd=True)
it hands the root to the host's systemd as pid 1, which runs the command as the one service of
a target of its own, the host's units and generators masked (SYSTEMD_FILES, _init), and powers
off after it. The command's output comes back over the serial console.

    python tests/vm.py fetch     downloads the kernel into CACHE (apt-get download; .ci/test-deps)
    python tests/vm.py run [--systemd] CMD   runs CMD in the VM (no disk), for a look around
"""

import gzip
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jailkit.launch.syscalls import prctl

CACHE = Path("/var/cache/jailkit-tests/kernel")
BUSYBOX = "/bin/busybox"  # busybox-static
# The modules the guest loads, each after what it depends on (modinfo's `depends`, resolved at
# fetch time): the 9p root, the scratch disk and its ext4, and bfq (io_weight's scheduler).
# (ext4's checksums need crc32c from the crypto API: a module that nothing `depends` on)
WANTED_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay", "virtio_blk", "crc32c_generic",
                  "ext4", "bfq")
MEMORY_MB = 1024
PR_SET_PDEATHSIG = 1
MARK = "jkvm:"  # the console lines of the guest's init, as opposed to its command's
# The guest's boot under systemd (run(systemd=True)), in /etc/systemd: a target of its own (not
# multi-user.target, which would start the host's services) wanting one service, the command,
# whose end (success or not: its status is on the console) powers the guest off; and every
# service's stderr on the console, as there is no journal.
SYSTEMD_FILES = {
    "system.conf.d/jkvm.conf": """[Manager]
DefaultStandardError=tty
""",
    "system/jkvm.target": """[Unit]
Description=jailkit's VM: the command alone
Wants=jkvm.service
""",
    "system/jkvm.service": """[Unit]
Description=jailkit's VM command
DefaultDependencies=no
SuccessAction=poweroff-force
FailureAction=poweroff-force

[Service]
Type=oneshot
ExecStart=/run/vm/busybox sh /run/vm/stage2
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0
""",
}
FETCH_HINT = "the VM's kernel is not fetched: run `python tests/vm.py fetch` (.ci/test-deps does)"


def _module_name(path: Path) -> str:
    return path.name.removesuffix(".ko").replace("-", "_")


def _depends(module: Path) -> list[str]:
    """The modules `module` needs: the `depends=` string of its .modinfo section (what
    modinfo -F depends prints; kmod is not installed everywhere)."""
    found = re.search(rb"\0depends=([^\0]*)\0", module.read_bytes())
    return [name.replace("-", "_") for name in found.group(1).decode().split(",") if name]


def fetch() -> str:
    """Download the kernel package linux-image-amd64 points at into CACHE; its release."""
    depends = subprocess.run(["apt-cache", "depends", "linux-image-amd64"], check=True,
                             capture_output=True, text=True).stdout
    package = re.search(r"Depends: (linux-image-6\.1\.\S+-amd64)\b", depends).group(1)
    with tempfile.TemporaryDirectory(prefix="jailkit-kernel-") as work:
        # as root: user _apt, apt's usual downloader, cannot write into a private directory
        subprocess.run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", package],
                       cwd=work, check=True)
        deb = next(Path(work).glob("*.deb"))
        tree = Path(work) / "tree"
        subprocess.run(["dpkg-deb", "-x", deb, tree], check=True)
        release = package.removeprefix("linux-image-")
        modules = {_module_name(p): p for p in (tree / "lib/modules" / release).rglob("*.ko")}
        order: list[str] = []

        def add(name: str) -> None:
            if name in order:
                return
            for dependency in _depends(modules[name]):
                add(dependency)
            order.append(name)

        for name in WANTED_MODULES:
            add(name)
        shutil.rmtree(CACHE, ignore_errors=True)
        (CACHE / "modules").mkdir(parents=True)
        shutil.copy(tree / f"boot/vmlinuz-{release}", CACHE / "vmlinuz")
        for name in order:
            shutil.copy(modules[name], CACHE / "modules" / f"{name}.ko")
        (CACHE / "modules/order").write_text("\n".join(order) + "\n")
        (CACHE / "release").write_text(release + "\n")
    return release


def release() -> str | None:
    """The fetched kernel's release (6.1.0-N-amd64), or None."""
    try:
        return (CACHE / "release").read_text().strip()
    except FileNotFoundError:
        return None


def _cpio(files: dict[str, tuple[int, bytes]]) -> bytes:
    """A newc archive (what the kernel unpacks as an initramfs) of `files`: path -> (mode,
    content); a mode with S_IFDIR makes a directory."""
    out = bytearray()
    for number, (path, (mode, data)) in enumerate([*files.items(), ("TRAILER!!!", (0, b""))]):
        name = path.encode() + b"\0"
        fields = (number + 1, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name), 0)
        out += b"070701" + "".join(f"{f:08x}" for f in fields).encode() + name
        out += b"\0" * (-len(out) % 4)  # the data, and the next header, start 4-aligned
        out += data + b"\0" * (-len(data) % 4)
    return bytes(out)


def _init(command: str, disk_at: str | None, systemd: bool,
          host_dirs: tuple[str, ...] = ()) -> str:
    """The initramfs's /init: load modules, mount the guest's root, run `command` (a shell
    command line) in it, power off. `systemd`: the root's systemd is pid 1 and runs the command
    as the unit jkvm.service (SYSTEMD_FILES) of the target jkvm.target, alone. `host_dirs`: the
    host's directories under /tmp or /run (which the guest has its own of) shown at the same
    paths, read-only (a checkout there)."""
    disk = "i=0; while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done\n" \
        f"mkdir -p /root{disk_at} && mount -t ext4 /dev/vda /root{disk_at} || fail disk\n" \
        if disk_at else ""  # virtio_blk finds its disk in the background
    shown = "".join(f"mkdir -p /root{d} && mount -o bind /host{d} /root{d} || fail 'show {d}'\n"
                    for d in host_dirs)
    if systemd:
        units = "".join(f"mkdir -p /root/etc/systemd/{os.path.dirname(name)} && "
                        f"cat > /root/etc/systemd/{name} <<'EOF'\n{text}EOF\n"
                        for name, text in SYSTEMD_FILES.items())
        # Nothing of the host's boot: every unit a .wants directory lists, that is the host's
        # services (ssh, databases, podman) and what sysinit.target pulls in (journald,
        # tmpfiles, sysctl ...; a unit with default dependencies, as jailkit's, needs
        # sysinit.target), and the generators (fstab, getty ...), each masked by a link to
        # /dev/null in the upper layer's /etc
        start = f"""{units}cd /root/etc/systemd && mkdir -p system-generators &&
for unit in /root/lib/systemd/system/*.wants/* system/*.wants/*; do
  ln -sf /dev/null system/${{unit##*/}}
done
for generator in /root/lib/systemd/system-generators/*; do
  ln -sf /dev/null system-generators/${{generator##*/}}
done
cd / || fail "systemd units"
exec switch_root /root /lib/systemd/systemd"""
        ending = "sync"  # jkvm.service's SuccessAction= and FailureAction= power off
    else:
        start = "exec switch_root /root /run/vm/busybox sh /run/vm/stage2"
        ending = "sync\n/run/vm/busybox poweroff -f"
    return f"""#!/bin/busybox sh
/bin/busybox mkdir -p /bin /proc /sys /dev /root
/bin/busybox --install -s /bin
fail() {{ dmesg | tail -5; echo "{MARK} cannot set up the guest: $1"; poweroff -f; }}
mount -t proc proc /proc && mount -t sysfs sys /sys && mount -t devtmpfs dev /dev || fail mounts
for m in $(cat /modules/order); do insmod /modules/$m.ko || fail "insmod $m"; done
mkdir -p /host /rw && mount -t tmpfs tmpfs /rw && mkdir /rw/upper /rw/work || fail tmpfs
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=262144 hostroot /host \\
  || fail 9p
mount -t overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work overlay /root \\
  || fail overlay
mount -t tmpfs -o mode=1777 tmpfs /root/tmp && mount -t tmpfs -o mode=755 tmpfs /root/run ||
  fail "tmp, run"
{shown}mount -t proc proc /root/proc && mount -t sysfs sys /root/sys &&
  mount -t devtmpfs dev /root/dev && mkdir -p /root/dev/pts /root/dev/shm &&
  mount -t devpts devpts /root/dev/pts &&
  mount -t tmpfs tmpfs /root/dev/shm && mount -t cgroup2 cgroup2 /root/sys/fs/cgroup ||
  fail "guest mounts"
# not a container: systemd reads /.dockerenv (the host is one) as saying so
rm -f /root/.dockerenv
{disk}mkdir /root/run/vm && cp /bin/busybox /root/run/vm/busybox
cat > /root/run/vm/stage2 <<'EOF'
cd /
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/run/vm
{command}
echo "{MARK} exit $?"
{ending}
EOF
echo "{MARK} up $(cat /proc/uptime)"
{start}
"""


def initramfs(command: str, disk_at: str | None, systemd: bool = False,
              host_dirs: tuple[str, ...] = ()) -> bytes:
    modules = CACHE / "modules"
    files = {"bin": (0o40755, b""), "modules": (0o40755, b""),
             "init": (0o100755, _init(command, disk_at, systemd, host_dirs).encode()),
             "bin/busybox": (0o100755, Path(BUSYBOX).read_bytes()),
             "modules/order": (0o100644, (modules / "order").read_bytes())}
    for name in (modules / "order").read_text().split():
        files[f"modules/{name}.ko"] = (0o100644, (modules / f"{name}.ko").read_bytes())
    return gzip.compress(_cpio(files), compresslevel=1)


def run(command: str, disk: Path | None = None, disk_at: str | None = None,
        timeout: float = 240, echo=None, systemd: bool = False,
        host_dirs: tuple[str, ...] = ()) -> tuple[int | None, str]:
    """Boot the VM, run `command` (a shell command line) as root in it, power it off.
    `disk`: a raw ext4 image, mounted read-write at `disk_at`; `host_dirs`: see _init.
    Returns the command's exit status (None if the guest never said it: it failed to set up
    or ran out of time) and the console's text. `echo(line)` sees each console line as it
    comes. qemu is killed (by its pid) at `timeout` seconds, so this always ends."""
    if release() is None:
        raise RuntimeError(FETCH_HINT)
    if not shutil.which("qemu-system-x86_64") or not os.path.exists(BUSYBOX):
        raise RuntimeError("the VM needs qemu-system-x86_64 and busybox-static: apt-get install "
                           "qemu-system-x86 busybox-static (.ci/test-deps does)")
    with tempfile.TemporaryDirectory(prefix="jailkit-vm-") as work:
        initrd = Path(work) / "initrd.gz"
        initrd.write_bytes(initramfs(command, disk_at, systemd, host_dirs))
        argv = ["qemu-system-x86_64", "-nodefaults", "-display", "none", "-no-reboot",
                # TCG: these machines have a /dev/kvm, but run nested under Firecracker, where a
                # KVM guest hangs in its first instructions (-cpu host: qemu aborts on MSR 0x10a)
                "-machine", "q35,accel=tcg", "-cpu", "max",
                "-smp", "2", "-m", str(MEMORY_MB), "-serial", "stdio",
                "-kernel", str(CACHE / "vmlinuz"), "-initrd", str(initrd),
                # quiet: no kernel line (the OOM killer's report) cuts into the command's output
                # (systemd reads its unit from here, not from its arguments)
                "-append", "console=ttyS0 cgroup_no_v1=all panic=-1 quiet loglevel=1"
                           + " systemd.unit=jkvm.target" * systemd,
                "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,"
                            "multidevs=remap"]
        if disk:
            argv += ["-drive", f"file={disk},format=raw,if=virtio,cache=unsafe"]
        # killed with us too: a test run killed in its course must not leave a VM running
        qemu = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=lambda: prctl(PR_SET_PDEATHSIG, signal.SIGKILL))
        deadline = time.monotonic() + timeout
        lines: list[str] = []

        def take(raw: bytes) -> None:
            line = raw.decode(errors="replace").rstrip("\r")
            lines.append(line)
            if echo:
                echo(line)

        try:
            os.set_blocking(qemu.stdout.fileno(), False)
            pending = b""
            while qemu.poll() is None and time.monotonic() < deadline:
                chunk = qemu.stdout.read()
                if not chunk:
                    time.sleep(0.05)
                    continue
                *complete, pending = (pending + chunk).split(b"\n")
                for raw in complete:
                    take(raw)
            for raw in (pending + (qemu.stdout.read() or b"")).splitlines():
                take(raw)
        finally:
            if qemu.poll() is None:
                os.kill(qemu.pid, signal.SIGKILL)
                lines.append(f"{MARK} killed after {timeout:.0f} s")
            qemu.wait()
            qemu.stdout.close()
    status = None
    for line in lines:
        if line.startswith(f"{MARK} exit "):
            status = int(line.split()[-1])
    return status, "\n".join(lines)


def main(argv: list[str]) -> int:
    if argv[:1] == ["fetch"]:
        print(f"fetched {fetch()} into {CACHE}")
        return 0
    systemd = argv[1:2] == ["--systemd"]
    if argv[:1] == ["run"] and len(argv) > 1 + systemd:
        status, _ = run(" ".join(argv[1 + systemd:]), echo=print, systemd=systemd)
        return 1 if status is None else status
    print(__doc__.split("\n\n")[-1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
