#!/usr/bin/env python3
"""Deterministic, mirror-like test trees for scripts/bench.sh.

Why: the benchmark must compare dupmirror, duplicity, tar and rsync on the same data from one
run to the next, so every byte, name, mode and mtime here follows from a seed (never from the
clock or from directory listing order).

  corpus.py init DIR --files N --bytes B --seed S --volsize MB [--extra-files M --extra-bytes E]
      A tree of N entries (regular files, a few empty ones, symlinks, some dangling) in about
      N/30 directories (a few of them empty), totalling about B bytes: many small files
      (log-normal sizes, median a few KiB) and three files larger than one duplicity volume.
      Half the files are incompressible ("packages"), half are text. The optional extra
      entries go under bulk/ from their own random stream: the base part is byte-identical
      with or without them, so the same change can be applied to a tree 10x larger.
  corpus.py mutate DIR --step K --changes C --seed S
      Step K of the history: C files of the base part change (70% rewritten in part or in
      whole, 15% deleted, 15% created), with mtimes derived from K.
  corpus.py bigfile PATH --size BYTES --seed S
      A sparse file of several GB: 1 MiB random islands every 32 MiB, zeros (holes) between.
  corpus.py bigmutate PATH --step K --seed S
      Rewrites one island and fills part of one hole.
"""

import argparse
import os
import random
import string

BASE_MTIME = 1_690_000_000
POOL = 8 << 20
EXTS = ["deb", "tar.xz", "txt", "html", "gz", "json", "c", "h", "dsc", "rpm"]


class Pools:
    """Content sources: slices of one random pool (incompressible) and one text pool."""

    def __init__(self, seed):
        rng = random.Random(seed)
        self.binary = rng.randbytes(POOL)
        words = [
            "".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 10)))
            for _ in range(3000)
        ]
        lines = []
        total = 0
        while total < POOL:
            line = " ".join(rng.choices(words, k=rng.randint(4, 14))) + "\n"
            lines.append(line)
            total += len(line)
        self.text = "".join(lines).encode()[:POOL]

    def write(self, f, rng, size, text):
        pool = self.text if text else self.binary
        while size > 0:
            n = min(size, POOL // 2)
            off = rng.randrange(POOL - n + 1)
            f.write(pool[off : off + n])
            size -= n


def lognormal_sizes(rng, count, total, cap):
    """`count` sizes with a heavy tail, scaled to sum to about `total`, each at most `cap`."""
    raw = [rng.lognormvariate(0.0, 1.6) for _ in range(count)]
    scale = total / max(sum(raw), 1e-9)
    return [min(cap, max(1, int(r * scale))) for r in raw]


def name(rng, i):
    stem = "".join(rng.choices(string.ascii_lowercase + string.digits, k=rng.randint(3, 12)))
    # A few awkward names, as real mirrors have.
    if i % 997 == 5:
        stem += " with space"
    elif i % 1499 == 7:
        stem += "-\u00e9t\u00e9"
    return f"{stem}-{i}.{rng.choice(EXTS)}"


def build(root, prefix, rng, pools, files, nbytes, volsize, large):
    """Creates `files` entries under root/prefix; returns nothing, sets every mtime."""
    base = os.path.join(root, prefix) if prefix else root
    os.makedirs(base, exist_ok=True)
    ndirs = max(1, files // 30)
    dirs = [""]
    for i in range(1, ndirs):
        parent = dirs[rng.randrange(len(dirs))]
        if parent.count("/") >= 5:
            parent = ""
        d = (parent + "/" if parent else "") + f"d{i:05d}-{rng.choice(['main', 'pool', 'dists', 'src', 'doc'])}"
        dirs.append(d)
        os.mkdir(os.path.join(base, d))
    empty = set(rng.sample(range(1, ndirs), min(ndirs - 1, ndirs // 50)))
    homes = [d for i, d in enumerate(dirs) if i not in empty]
    nlinks = files * 3 // 100
    nempty = files * 2 // 100
    nlarge = large
    nregular = max(0, files - nlinks - nempty - nlarge)
    vol = volsize << 20
    large_sizes = [int(vol * (1.2 + 0.6 * k)) for k in range(nlarge)]
    small_total = max(nregular, nbytes - sum(large_sizes))
    sizes = lognormal_sizes(rng, nregular, small_total, vol // 2)
    sizes += large_sizes
    made = []
    for i, size in enumerate(sizes):
        rel = os.path.join(rng.choice(homes), name(rng, i))
        path = os.path.join(base, rel)
        text = size < vol and rng.random() < 0.5
        with open(path, "wb") as f:
            pools.write(f, rng, size, text)
        os.chmod(path, rng.choice([0o644] * 8 + [0o755, 0o600]))
        os.utime(path, (BASE_MTIME, BASE_MTIME - rng.randrange(10**7)))
        made.append(rel)
    for i in range(nempty):
        path = os.path.join(base, rng.choice(homes), f"empty-{i}")
        open(path, "wb").close()
        os.utime(path, (BASE_MTIME, BASE_MTIME - rng.randrange(10**7)))
    for i in range(nlinks):
        d = rng.choice(homes)
        target = os.path.relpath(rng.choice(made), d or ".") if made and rng.random() < 0.9 else f"missing-{i}"
        path = os.path.join(base, d, f"link-{i}")
        os.symlink(target, path)
        os.utime(path, (BASE_MTIME, BASE_MTIME - rng.randrange(10**7)), follow_symlinks=False)
    for d in sorted(dirs, key=lambda d: -d.count("/")):
        os.utime(os.path.join(base, d), (BASE_MTIME, BASE_MTIME - rng.randrange(10**6)))


def base_files(root):
    """The regular files outside bulk/, sorted: the population every mutation draws from."""
    out = []
    for d, subdirs, files in os.walk(root):
        rel = os.path.relpath(d, root)
        if rel == "bulk" or rel.startswith("bulk/"):
            subdirs[:] = []
            continue
        subdirs.sort()
        for f in files:
            p = os.path.join(d, f)
            if os.path.isfile(p) and not os.path.islink(p):
                out.append(os.path.relpath(p, root))
    return sorted(out)


def base_dirs(root):
    return sorted(
        os.path.relpath(d, root)
        for d, subdirs, _ in os.walk(root)
        if not (os.path.relpath(d, root) + "/").startswith("bulk/")
    )


def init(a):
    pools = Pools(a.seed)
    build(a.dir, "", random.Random(a.seed), pools, a.files, a.bytes, a.volsize, 3)
    if a.extra_files:
        build(a.dir, "bulk", random.Random(a.seed + 1), pools, a.extra_files, a.extra_bytes, a.volsize, 0)
    os.utime(a.dir, (BASE_MTIME, BASE_MTIME))


def mutate(a):
    rng = random.Random(a.seed * 7919 + a.step)
    pools = Pools(a.seed)
    mtime = BASE_MTIME + a.step * 1000
    files = base_files(a.dir)
    dirs = base_dirs(a.dir)
    chosen = rng.sample(files, min(a.changes, len(files)))
    nmod = len(chosen) * 70 // 100
    ndel = len(chosen) * 15 // 100
    touched_dirs = set()
    for i, rel in enumerate(chosen):
        path = os.path.join(a.dir, rel)
        if i < nmod:
            size = os.path.getsize(path)
            if size < 8192:
                with open(path, "wb") as f:
                    pools.write(f, rng, max(1, int(size * rng.uniform(0.8, 1.2))), rng.random() < 0.5)
            else:
                with open(path, "r+b") as f:
                    f.seek(rng.randrange(size))
                    pools.write(f, rng, min(65536, size // 10), False)
                    if rng.random() < 0.25:
                        f.seek(0, os.SEEK_END)
                        pools.write(f, rng, 1024, True)
            os.utime(path, (mtime, mtime + i))
        elif i < nmod + ndel:
            os.unlink(path)
            touched_dirs.add(os.path.dirname(rel))
    for j in range(len(chosen) - nmod - ndel):
        d = rng.choice(dirs)
        rel = os.path.join(d, f"new-{a.step}-{j}.txt")
        path = os.path.join(a.dir, rel)
        with open(path, "wb") as f:
            pools.write(f, rng, max(1, int(rng.lognormvariate(8.5, 1.2))), True)
        os.utime(path, (mtime, mtime + j))
        touched_dirs.add(d)
    for d in sorted(touched_dirs, key=lambda d: -d.count("/")):
        os.utime(os.path.join(a.dir, d), (mtime, mtime))


ISLAND = 1 << 20
STRIDE = 32 << 20


def bigfile(a):
    rng = random.Random(a.seed)
    with open(a.path, "wb") as f:
        f.truncate(a.size)
        for off in range(0, a.size - ISLAND + 1, STRIDE):
            f.seek(off)
            f.write(rng.randbytes(ISLAND))
    os.utime(a.path, (BASE_MTIME, BASE_MTIME))


def bigmutate(a):
    rng = random.Random(a.seed * 7919 + a.step)
    size = os.path.getsize(a.path)
    islands = max(1, size // STRIDE)
    with open(a.path, "r+b") as f:
        f.seek(rng.randrange(islands) * STRIDE)
        f.write(rng.randbytes(ISLAND))
        f.seek(rng.randrange(islands) * STRIDE + STRIDE // 2)
        f.write(rng.randbytes(ISLAND // 4))
    os.utime(a.path, (BASE_MTIME + a.step * 1000,) * 2)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("init")
    i.add_argument("dir")
    i.add_argument("--files", type=int, required=True)
    i.add_argument("--bytes", type=int, required=True)
    i.add_argument("--seed", type=int, default=1)
    i.add_argument("--volsize", type=int, required=True, help="duplicity --volsize, MB")
    i.add_argument("--extra-files", type=int, default=0)
    i.add_argument("--extra-bytes", type=int, default=0)
    m = sub.add_parser("mutate")
    m.add_argument("dir")
    m.add_argument("--step", type=int, required=True)
    m.add_argument("--changes", type=int, required=True)
    m.add_argument("--seed", type=int, default=1)
    b = sub.add_parser("bigfile")
    b.add_argument("path")
    b.add_argument("--size", type=int, required=True)
    b.add_argument("--seed", type=int, default=1)
    bm = sub.add_parser("bigmutate")
    bm.add_argument("path")
    bm.add_argument("--step", type=int, required=True)
    bm.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    {"init": init, "mutate": mutate, "bigfile": bigfile, "bigmutate": bigmutate}[a.cmd](a)


if __name__ == "__main__":
    main()
