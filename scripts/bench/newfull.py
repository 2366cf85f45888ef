#!/usr/bin/env python3
"""The new-full-chain section of scripts/bench.sh (issue 15 item 4): a clustered change, and
the volume-granularity optimum a host must read, computed without dupmirror.

Why a separate file: corpus.py's source is part of every corpus's cache key, so a change
there would regenerate every cached corpus.

  newfull.py cluster DIR --changes C --seed S
      A clustered 1% change of the base part (outside bulk/): C files that follow each other
      in duplicity's index order, from a random start, changed as corpus.py's mutate does
      (70% rewritten in part or in whole, 15% deleted, 15% created beside them).
  newfull.py optimum MANIFEST OLD NEW
      The volumes a host holding tree OLD must read to reach tree NEW from a full whose
      manifest is MANIFEST: every volume whose range holds a path that needs data (new in
      NEW, or another type, content or symlink target than in OLD), no other. Prints JSON:
      {"volumes": [...], "paths": N}.
"""

import argparse
import filecmp
import json
import os
import random
import stat

import corpus


def index_key(rel):
    """Duplicity's index order: by path components, as tuples of bytes."""
    return tuple(os.fsencode(c) for c in rel.split("/")) if rel not in ("", ".") else ()


def cluster(a):
    rng = random.Random(a.seed * 104729 + 1)
    pools = corpus.Pools(a.seed)
    mtime = corpus.BASE_MTIME + 500_000
    files = sorted(corpus.base_files(a.dir), key=index_key)
    n = min(a.changes, len(files))
    start = rng.randrange(len(files) - n + 1)
    chosen = files[start : start + n]
    nmod = n * 70 // 100
    ndel = n * 15 // 100
    touched_dirs = set()
    # Interleaved kinds, so the cluster's rewrites, deletions and creations share volumes.
    kinds = ["mod"] * nmod + ["del"] * ndel + ["new"] * (n - nmod - ndel)
    rng.shuffle(kinds)
    for i, (rel, kind) in enumerate(zip(chosen, kinds)):
        path = os.path.join(a.dir, rel)
        if kind == "mod":
            size = os.path.getsize(path)
            with open(path, "r+b") as f:
                f.seek(rng.randrange(max(1, size)))
                pools.write(f, rng, max(1, min(65536, size // 10)), False)
            os.utime(path, (mtime, mtime + i))
        elif kind == "del":
            os.unlink(path)
            touched_dirs.add(os.path.dirname(rel))
        else:
            d = os.path.dirname(rel)
            new = os.path.join(a.dir, d, f"new-cluster-{i}.txt")
            with open(new, "wb") as f:
                pools.write(f, rng, max(1, int(rng.lognormvariate(8.5, 1.2))), True)
            os.utime(new, (mtime, mtime + i))
            touched_dirs.add(d)
    for d in sorted(touched_dirs, key=lambda d: -d.count("/")):
        os.utime(os.path.join(a.dir, d), (mtime, mtime))


def unquote(raw):
    """Duplicity's manifest quoting: a double-quoted string with \\xNN escapes."""
    if not raw.startswith(b'"'):
        return raw
    inner, out, i = raw[1:-1], bytearray(), 0
    while i < len(inner):
        if inner[i : i + 2] == b"\\x":
            out.append(int(inner[i + 2 : i + 4], 16))
            i += 4
        else:
            out.append(inner[i])
            i += 1
    return bytes(out)


def volume_ranges(manifest):
    """(number, start index, end index) per volume, from the manifest's text."""
    out = {}
    current = None
    with open(manifest, "rb") as f:
        for line in f:
            tokens = line.split()
            if not tokens:
                continue
            word = tokens[0].lower()
            if not line[:1].isspace():
                current = int(tokens[1].rstrip(b":")) if word == b"volume" else None
                if current is not None:
                    out[current] = [(), ()]
                continue
            if current is None or word not in (b"startingpath", b"endingpath"):
                continue
            p = unquote(tokens[1])
            key = () if p == b"." else tuple(p.split(b"/"))
            out[current][0 if word == b"startingpath" else 1] = key
    return [(n, s, e) for n, (s, e) in sorted(out.items())]


def kind(st):
    return stat.S_IFMT(st.st_mode)


def needing_data(old, new):
    """Paths of NEW a host holding OLD needs data for, as index keys."""
    out = []
    for d, subdirs, files in os.walk(new):
        for name in subdirs + files:
            p = os.path.join(d, name)
            rel = os.path.relpath(p, new)
            q = os.path.join(old, rel)
            st = os.lstat(p)
            try:
                qs = os.lstat(q)
            except FileNotFoundError:
                out.append(index_key(rel))
                continue
            if kind(st) != kind(qs):
                out.append(index_key(rel))
            elif stat.S_ISLNK(st.st_mode):
                if os.readlink(p) != os.readlink(q):
                    out.append(index_key(rel))
            elif stat.S_ISREG(st.st_mode):
                if st.st_size != qs.st_size or not filecmp.cmp(p, q, shallow=False):
                    out.append(index_key(rel))
    return out


def optimum(a):
    ranges = volume_ranges(a.manifest)
    paths = needing_data(a.old, a.new)
    volumes = sorted({n for p in paths for n, s, e in ranges if s <= p <= e})
    print(json.dumps({"volumes": volumes, "paths": len(paths)}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cluster")
    c.add_argument("dir")
    c.add_argument("--changes", type=int, required=True)
    c.add_argument("--seed", type=int, default=1)
    o = sub.add_parser("optimum")
    o.add_argument("manifest")
    o.add_argument("old")
    o.add_argument("new")
    a = p.parse_args()
    {"cluster": cluster, "optimum": optimum}[a.cmd](a)


if __name__ == "__main__":
    main()
