"""Memory and pids limits, through the cgroup v1 controllers these machines have.

One directory per controller per jail, `jailkit/<name>-<launcher pid>`, made (and limited)
before the jail's first process exists, joined by it before it starts anything, and removed by
the waiter once the jail has exited. Callers only see `plan`, `create`, `attach` and `remove`,
so that a cgroup v2 hierarchy can stand behind the same four.
"""

import os

from jailkit.errors import JailkitError

V1_ROOT = "/sys/fs/cgroup"


class Cgroup:
    """One controller's directory for one jail, with the files to write into it, in order."""

    __slots__ = ("path", "settings")

    def __init__(self, path: str, settings: list[tuple[str, str]]):
        self.path, self.settings = path, settings

    def __repr__(self) -> str:
        return f"{self.path} " + " ".join(f"{k}={v}" for k, v in self.settings)


def plan(name: str, launcher_pid: int, memory_max: int | None, pids_max: int | None,
         root: str = V1_ROOT) -> list[Cgroup]:
    groups = []
    leaf = f"jailkit/{name}-{launcher_pid}"
    if memory_max is not None:
        settings = [("memory.limit_in_bytes", str(memory_max))]
        # with swap accounting the limit must cover swap too, or the jail just swaps
        if os.path.exists(f"{root}/memory/memory.memsw.limit_in_bytes"):
            settings.append(("memory.memsw.limit_in_bytes", str(memory_max)))
        groups.append(Cgroup(f"{root}/memory/{leaf}", settings))
    if pids_max is not None:
        groups.append(Cgroup(f"{root}/pids/{leaf}", [("pids.max", str(pids_max))]))
    return groups


def create(groups: list[Cgroup]) -> None:
    made = []
    try:
        for group in groups:
            os.makedirs(os.path.dirname(group.path), exist_ok=True)
            os.mkdir(group.path)
            made.append(group)
            for key, value in group.settings:
                with open(f"{group.path}/{key}", "w") as f:
                    f.write(value)
    except OSError as e:
        remove(made)
        hint = " (cgroup limits need root)" if os.geteuid() != 0 else ""
        raise JailkitError(f"cannot set up cgroup {e.filename or ''}: {e.strerror}{hint}") from None


def attach(groups: list[Cgroup], pid: int) -> None:
    for group in groups:
        with open(f"{group.path}/cgroup.procs", "w") as f:
            f.write(str(pid))


def remove(groups: list[Cgroup]) -> None:
    for group in groups:
        try:
            os.rmdir(group.path)
        except FileNotFoundError:
            pass
