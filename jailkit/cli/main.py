"""The command line: a thin shell over library functions.

Each command lives in its own module and is imported only when invoked, so that
`jailkit ldd` does not pay for jinja2 and `jailkit run` pays for neither.
"""

import importlib

import click

# command name -> "module:attribute" of a click command
COMMANDS = {
    "ldd": "jailkit.cli.ldd:ldd",
    "profiles": "jailkit.cli.build:profiles",
    "show": "jailkit.cli.build:show",
    "build": "jailkit.cli.build:build",
    "check": "jailkit.cli.build:check",
    "update": "jailkit.cli.build:update",
    "run": "jailkit.cli.run:run_command",
    "export": "jailkit.cli.export:export",
    "import": "jailkit.cli.export:import_",
    "sbom": "jailkit.cli.sbom:sbom",
    "outdated": "jailkit.cli.sbom:outdated",
    "trace": "jailkit.cli.author:trace",
    "ps": "jailkit.cli.service:ps",
    "stats": "jailkit.cli.service:stats",
    "stop": "jailkit.cli.service:stop",
    "kill": "jailkit.cli.service:kill",
    "restart": "jailkit.cli.service:restart",
    "rm": "jailkit.cli.remove:rm",
    "doctor": "jailkit.cli.doctor:doctor",
    "logs": "jailkit.cli.operate:logs",
    "exec": "jailkit.cli.operate:exec_",
    "unit": "jailkit.cli.operate:unit",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        return getattr(importlib.import_module(module_name), attribute)


# every command takes -h as run (click-free) does; subcommands inherit it from the group
@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="jailkit")
def cli():
    """Build minimal, hardened service jails from profiles, and run services in them."""
