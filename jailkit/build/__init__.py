"""Building a jail: the plan (pure data), then applying it to the jail directory."""
