"""A Draft as profile text, in the bundled profiles' layout, with a comment on every entry."""

from __future__ import annotations

import json
import os
import stat

from jailkit.author.fold import Draft, Entry
from jailkit.author.trace import SERVICE_PATH


def quote(text: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's, \\uXXXX included)."""
    return json.dumps(text, ensure_ascii=False)


def comment(text: str) -> str:
    return "# " + " ".join(text.split())


def _list(key: str, entries: list[Entry]) -> list[str]:
    if not entries:
        return []
    lines = [f"{key} = ["]
    lines.extend(f"    {quote(e.value)},  {comment(e.why)}" for e in entries)
    lines.append("]")
    return lines


def _table(header: str, why: str, values: dict) -> list[str]:
    lines = ["", comment(why), f"[{header}]"]
    for key, value in values.items():
        if value is not None:
            lines.append(f"{key} = {value if isinstance(value, int) else quote(value)}")
    return lines


def _private(files: list[Entry]) -> list[Entry]:
    """The host files among `files` (directories walked) that not every user may read: a build
    copies them only when the profile names them in private_files."""
    out = []
    for entry in files:
        paths = [entry.value]
        if os.path.isdir(entry.value):
            paths = [os.path.join(top, name) for top, _, names in os.walk(entry.value)
                     for name in names]
        for path in paths:
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and not st.st_mode & stat.S_IROTH:
                out.append(Entry(path, "not every user may read it on the host: check that "
                                       "the service needs it in the jail"))
    return out


def render(draft: Draft, traced: list[str]) -> str:
    lines = [
        comment(f"written by `jailkit trace` from what `{' '.join(traced)}` did; review it: "
                "it holds what one run touched, no more"),
        f"description = {quote(draft.name + ': profile learned by jailkit trace')}",
    ]
    lines += _list("extends", draft.extends)
    lines += _list("binaries", draft.binaries)
    lines += _list("libraries", draft.libraries)
    lines += _list("files", draft.files)
    lines += _list("private_files", _private(draft.files))
    lines += _list("devices", draft.devices)
    for secret in draft.secrets:
        lines.append(comment(f"left out, a secret: {secret.value} ({secret.why}); add it to "
                             "`files` yourself if the jail must hold it"))
    for note in draft.notes:
        lines.append(comment(f"note: {note}"))
    for name, user in draft.users.items():
        lines += _table(f"users.{quote(name)}", user["why"],
                        {"uid": user["uid"], "gid": user["gid"], "home": user["home"],
                         "shell": user["shell"]})
    for name, group in draft.groups.items():
        lines += _table(f"groups.{quote(name)}", group["why"], {"gid": group["gid"]})
    for path, directory in draft.directories.items():
        lines += _table(f"directories.{quote(path)}", directory["why"], {"mode": "0755"})
    for path, entry in draft.writable.items():
        lines += _table(f"writable.{quote(path)}", entry["why"],
                        {"kind": entry["kind"], "owner": entry.get("owner"),
                         "mode": entry["mode"]})
    lines += ["", "[service]", f"command = [{', '.join(quote(a) for a in draft.command)}]"]
    if draft.workdir:
        lines.append(f"workdir = {quote(draft.workdir)}  "
                     f"{comment('it was started here and used it')}")
    lines.append(f"env = {{ PATH = {quote(SERVICE_PATH)} }}  "
                 f"{comment('the environment it was traced with')}")
    if draft.capabilities:
        lines.append("capabilities = [")
        lines.extend(f"    {quote(c.value)},  {comment(c.why)}" for c in draft.capabilities)
        lines.append("]")
    if draft.network:
        lines.append(f"network = {quote(draft.network)}  "
                     f"{comment('it bound or connected to ports: the host network')}")
    if draft.ready:
        lines.append(f"ready = {{ tcp = {draft.ready} }}  "
                     f"{comment('the first port it bound: run --detach returns once it answers')}")
    if draft.bind or draft.connect:
        lines += ["", "[service.ports]"]
        lines += _list("bind", draft.bind)
        lines += _list("connect", draft.connect)
    if draft.nofile:
        soft, hard = draft.nofile
        lines += ["", "[service.limits]",
                  f"nofile = [{soft}, {hard}]  {comment('it raised its open-files limit so')}"]
    return "\n".join(lines) + "\n"
