"""Resource limits from the profile, set just before the service starts (they are inherited)."""

import os

from jailkit.errors import JailkitError
from jailkit.launch import syscalls as sc
from jailkit.vocabulary import RLIMITS


def apply(limits: dict[str, tuple[int | None, int | None]]) -> None:
    """Set each (soft, hard) pair; None means unlimited. Raising a hard limit fails (EPERM)."""
    for name, (soft, hard) in limits.items():
        soft = sc.RLIM_INFINITY if soft is None else soft
        try:
            sc.setrlimit(RLIMITS[name], soft, sc.RLIM_INFINITY if hard is None else hard)
        except OSError as e:
            raise JailkitError(
                f"rlimit {name} ({soft}, {hard}) cannot be set: {os.strerror(e.errno)}; "
                "a hard limit cannot be raised above the launcher's own"
            ) from None
