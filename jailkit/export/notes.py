"""The notes every export format shares, on what a jail keeps outside its tree and what it
must not hand out unawares: its state directories (their files stay in DIR/state) and its
secrets (source.BuiltJail.secrets). Each format says where it leaves them with these words."""

from jailkit.export.source import BuiltJail


def owner_hint(w) -> str:
    """How the jail makes a state directory's top, when a fresh volume's root:root 0755 is not
    that."""
    if (w.uid, w.gid, w.mode) == (0, 0, 0o755):
        return ""
    return f" (the jail makes it {w.uid}:{w.gid}, mode {w.mode:04o})"


def secret_notes(jail: BuiltJail, leave_out: frozenset[str], holder: str, held: str,
                 provide) -> list[str]:
    """One line naming the secrets `holder` holds (and why that matters: `held`), one naming
    those left out of it (and how the service gets them: `provide(paths)`)."""
    kept = [f"{path} ({what})" for path, what in jail.secrets().items()
            if path not in leave_out]
    lines = []
    if kept:
        lines.append(f"{holder} holds secrets: {', '.join(kept)}: {held}")
    if leave_out:
        left = sorted(leave_out)
        lines.append(f"left out of {holder} (--without-secrets): {', '.join(left)}: the "
                     f"service needs them: {provide(left)}")
    return lines
