"""Console entry point. Kept tiny: the launch path must not pay for click or pyelftools."""

import sys


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "run":
        # `jailkit run` has its own parser: importing click alone costs more than bwrap's start
        from jailkit.cli.run import main as run_main

        sys.exit(run_main(sys.argv[2:]))
    if "site" not in sys.modules:
        # the installed script starts Python without site (-S), which `run` never needs; the
        # other commands need the venv's site-packages (click, pyelftools, jinja2)
        import site

        site.main()
    from jailkit.cli.main import cli

    cli()


if __name__ == "__main__":
    sys.exit(main())
