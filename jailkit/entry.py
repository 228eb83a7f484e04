"""Console entry point. Kept tiny: the launch path must not pay for click or pyelftools."""

import sys


def main() -> None:
    from jailkit.cli import cli

    cli()


if __name__ == "__main__":
    sys.exit(main())
