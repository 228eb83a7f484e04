"""The build steps pyproject.toml cannot declare: compiling jailkit's pid-1 helper.

`jailkit run` execs jailkit/launch/reaper.c, compiled static (it runs inside jails that may have no
libc), as the jail's pid 1 and as the outside waiter. The package build compiles it into the
package, beside jailkit/launch/ (into the source tree for an editable install), so an installed
jailkit finds it next to its own modules. The wheel then holds a Linux executable, so it is tagged
for the platform (py3-none-linux_x86_64), as dumb-init's wheel is for its static pid 1.
"""

import os
import subprocess

from setuptools import Distribution, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_py import build_py

REAPER_SOURCE = "jailkit/launch/reaper.c"
REAPER_NAME = "jailkit-reaper"  # jailkit.launch.plan.REAPER_NAME
CFLAGS = ["-static", "-Os", "-s", "-Wall", "-Wextra", "-Werror"]
# musl: a static helper of ~45 KB instead of glibc's ~700 KB. Each running jail's pid 1 runs from
# its own sealed memory copy of it (CVE-2019-5736), so its size is resident memory per jail. The
# kernel's uapi headers (linux/capability.h, ...) come after musl's own.
MUSL = ["musl-gcc", "-idirafter", "/usr/include", "-idirafter", "/usr/include/x86_64-linux-gnu"]


class build_py_with_reaper(build_py):
    def run(self):
        super().run()
        # an editable install imports the source tree itself: the helper goes there
        package_dir = (self.get_package_dir("jailkit.launch") if self.editable_mode
                       else os.path.join(self.build_lib, "jailkit", "launch"))
        os.makedirs(package_dir, exist_ok=True)
        target = os.path.join(package_dir, REAPER_NAME)
        try:
            subprocess.run([*MUSL, *CFLAGS, "-o", target, REAPER_SOURCE], check=True)
        except (OSError, subprocess.CalledProcessError) as e:
            raise SystemExit(f"compiling {REAPER_SOURCE} failed ({e}): jailkit needs gcc, musl "
                             "and the kernel headers (Debian: apt-get install gcc musl-tools "
                             "linux-libc-dev)") from None
        self.reaper = target

    def get_outputs(self, include_bytecode=True):
        outputs = super().get_outputs(include_bytecode)
        reaper = getattr(self, "reaper", None)
        return [*outputs, reaper] if reaper and not self.editable_mode else outputs


class BinaryDistribution(Distribution):
    def has_ext_modules(self):
        return True  # it holds a Linux executable: installed as platform code, in a platform wheel


class platform_wheel(bdist_wheel):
    def get_tag(self):
        _, _, platform = super().get_tag()
        return "py3", "none", platform  # any Python 3 runs the modules; the helper is native


setup(
    distclass=BinaryDistribution,
    cmdclass={"build_py": build_py_with_reaper, "bdist_wheel": platform_wheel},
    # instead of an entry-point wrapper, whose `import re` costs ~5 ms at every `jailkit run`
    scripts=["bin/jailkit"],
)
