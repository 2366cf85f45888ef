#!/usr/bin/env python3
"""Histories for the catch-up section of scripts/bench.sh (issue 15, item 1).

Why: a host that is ten sets behind should pay for what the ten sets leave changed, not ten
times for one set. Two histories pin the two cases the targets name, on a tree made by
corpus.py (its base part):

  catchup.py same DIR --step K --changes C --seed S
      Step K rewrites the SAME C files every step (chosen once from the seed): the merged
      catch-up writes each of them once, a set-by-set one ten times.
  catchup.py disjoint DIR --step K --changes C --seed S
      Step K rewrites the K-th of disjoint slices of C files: the merged catch-up writes
      what the ten sets write, in one pass.

Small files (under 8 KiB) are rewritten whole, larger ones in part (64 KiB at a place that
depends on the step), as corpus.py's rewrites are; mtimes follow from K. Every byte follows
from the seed and the step.
"""

import argparse
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from corpus import BASE_MTIME, Pools, base_files  # noqa: E402


def chosen(files, mode, step, changes, seed):
    order = list(files)
    random.Random(seed * 104729).shuffle(order)
    if mode == "same":
        return order[:changes]
    return order[(step - 1) * changes : step * changes]


def rewrite(a):
    files = base_files(a.dir)
    pools = Pools(a.seed)
    rng = random.Random(a.seed * 7919 + a.step * 31 + (a.mode == "same"))
    mtime = BASE_MTIME + a.step * 1000
    for i, rel in enumerate(chosen(files, a.mode, a.step, a.changes, a.seed)):
        path = os.path.join(a.dir, rel)
        size = os.path.getsize(path)
        if size < 8192:
            with open(path, "wb") as f:
                pools.write(f, rng, max(1, size), rng.random() < 0.5)
        else:
            with open(path, "r+b") as f:
                f.seek(rng.randrange(size))
                pools.write(f, rng, min(65536, size // 10), False)
        os.utime(path, (mtime, mtime + i))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["same", "disjoint"])
    p.add_argument("dir")
    p.add_argument("--step", type=int, required=True)
    p.add_argument("--changes", type=int, required=True)
    p.add_argument("--seed", type=int, default=1)
    rewrite(p.parse_args())


if __name__ == "__main__":
    main()
