#!/usr/bin/env python3
"""Write the dupmirror tree listing (`*.tree`) of a directory.

The format is shared with tests/support/mod.rs (Tree::to_text / Tree::parse); keep the two in
step. One line per path, sorted by the raw path bytes, the root written as ".":

    <path> <kind> [key=value]...

kind is dir, file, symlink, fifo, chr, blk or socket. Keys: mode (octal permission bits
07777, not for symlinks), uid, gid, mtime (seconds, not for symlinks), size and fnv (FNV-1a 64
of the content, hex) for files, target for symlinks, rdev=MAJOR,MINOR for devices. Paths and
symlink targets escape every byte outside 0x21..0x7e, and the backslash, as \\xNN.

Usage: tree_snapshot.py DIR [OUTPUT]
"""
import os
import stat
import sys

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
MASK = 0xFFFFFFFFFFFFFFFF


def fnv1a64(path):
    h = FNV_OFFSET
    with open(path, "rb") as f:
        while True:
            block = f.read(1 << 20)
            if not block:
                break
            for b in block:
                h = ((h ^ b) * FNV_PRIME) & MASK
    return h


def escape(raw):
    out = []
    for b in raw:
        if 0x21 <= b <= 0x7E and b != 0x5C:
            out.append(chr(b))
        else:
            out.append("\\x%02x" % b)
    return "".join(out)


def line(rel, full):
    st = os.lstat(full)
    m = st.st_mode
    fields = []
    if stat.S_ISDIR(m):
        kind = "dir"
    elif stat.S_ISREG(m):
        kind = "file"
    elif stat.S_ISLNK(m):
        kind = "symlink"
    elif stat.S_ISFIFO(m):
        kind = "fifo"
    elif stat.S_ISCHR(m):
        kind = "chr"
    elif stat.S_ISBLK(m):
        kind = "blk"
    elif stat.S_ISSOCK(m):
        kind = "socket"
    else:
        raise SystemExit("unknown file type at %r" % full)
    if kind != "symlink":
        fields.append("mode=%04o" % stat.S_IMODE(m))
    fields.append("uid=%d" % st.st_uid)
    fields.append("gid=%d" % st.st_gid)
    if kind != "symlink":
        fields.append("mtime=%d" % (st.st_mtime_ns // 1_000_000_000))
    if kind == "file":
        fields.append("size=%d" % st.st_size)
        fields.append("fnv=%016x" % fnv1a64(full))
    if kind == "symlink":
        fields.append("target=" + escape(os.readlink(full)))
    if kind in ("chr", "blk"):
        fields.append("rdev=%d,%d" % (os.major(st.st_rdev), os.minor(st.st_rdev)))
    return escape(rel) + " " + kind + " " + " ".join(fields)


def walk(root):
    """Yield (relative path bytes, full path bytes) for every entry, sorted by bytes."""
    stack = [(b"", root)]
    entries = [(b".", root)]
    while stack:
        rel, full = stack.pop()
        for name in os.listdir(full):
            r = name if not rel else rel + b"/" + name
            f = full + b"/" + name
            entries.append((r, f))
            if stat.S_ISDIR(os.lstat(f).st_mode):
                stack.append((r, f))
    entries.sort()
    yield from entries


def main():
    if len(sys.argv) not in (2, 3):
        raise SystemExit(__doc__)
    root = os.fsencode(sys.argv[1]).rstrip(b"/") or b"/"
    lines = ["# dupmirror tree v1"] + [line(r, f) for r, f in walk(root)]
    text = "\n".join(lines) + "\n"
    if len(sys.argv) == 3:
        with open(sys.argv[2], "w", encoding="ascii") as f:
            f.write(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
