"""Profiles: TOML files, their composition, and templates."""
