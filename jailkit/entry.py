"""Console entry point. Kept tiny: the launch path must not pay for click or pyelftools."""

import sys


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "run":
        # `jailkit run` has its own parser: importing click alone costs more than bwrap's start
        from jailkit.cli.run import main as run_main

        sys.exit(run_main(sys.argv[2:]))
    from jailkit.cli.main import cli

    cli()


if __name__ == "__main__":
    sys.exit(main())
