"""The command line: thin shells over the stage packages (`run` is click-free)."""
