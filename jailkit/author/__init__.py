"""Writing a profile by watching a service: trace it (trace.py), turn what it touched into profile
entries (fold.py), and write them as a commented profile (write.py)."""
