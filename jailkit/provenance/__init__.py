"""Where a jail's files came from: Debian package provenance, the jail's dpkg status, the SBOM."""
