"""jailkit: minimal, hardened service jails built from profiles."""

__version__ = "0.1.0"
