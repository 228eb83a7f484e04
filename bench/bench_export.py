"""`jailkit export --format oci` against `tar | gzip -n` of the same tree, measured in the same
run (run as root).

The python3 jail (~2,000 entries, ~83 MB) is built once; each round exports it to a fresh OCI
image layout (which reads every file, checks it against the manifest, writes a reproducible tar,
gzips it and writes the image's JSON documents), and packs the same tree with GNU tar piped to
`gzip -n` (level 6 both, no checking, no JSON). Prints the median of the per-round ratios.

Usage: /opt/jailkit/bin/python bench/bench_export.py [--runs N]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

JAILKIT = [sys.executable, "-m", "jailkit"]
REPO = Path(__file__).resolve().parent.parent


def timed(command, **kwargs) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, **kwargs)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    env = dict(os.environ, PYTHONPATH=str(REPO), SOURCE_DATE_EPOCH="0")
    work = Path(tempfile.mkdtemp(prefix="jailkit-bench-export-"))
    try:
        jail = work / "jail"
        subprocess.run([*JAILKIT, "build", "python3", "--root", jail], check=True, env=env,
                       stdout=subprocess.DEVNULL)
        tree = jail / "current" / "root"
        ratios, ours, theirs = [], [], []
        for i in range(args.runs):
            out = work / f"image-{i}"
            mine = timed([*JAILKIT, "export", "python3", "--root", jail, "--format", "oci",
                          "-o", out], env=env)
            plain = timed(["sh", "-c", f"tar -C {tree} --sort=name --numeric-owner -cf - . | "
                                       f"gzip -n -6 > {work}/plain.tar.gz"])
            shutil.rmtree(out)
            ours.append(mine)
            theirs.append(plain)
            ratios.append(mine / plain)
        size = sum(f.stat().st_size for f in tree.rglob("*") if f.is_file() and
                   not f.is_symlink())
        print(f"python3 jail: {size / 1e6:.1f} MB; export oci {statistics.median(ours):.2f} s, "
              f"tar | gzip -n {statistics.median(theirs):.2f} s (medians of {args.runs})")
        print(f"ratio (median of per-round ratios): {statistics.median(ratios):.2f}x "
              f"(range {min(ratios):.2f}-{max(ratios):.2f})")
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
