"""ELF reading and glibc's loader rules: which files a program needs."""
