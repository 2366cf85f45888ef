#!/usr/bin/env python3
"""Craft hostile or damaged duplicity sets for dupmirror's refusal tests.

The tests start from a real set written by upstream duplicity and change only what the case
needs, keeping everything else (headers, sigtar, manifest) as upstream wrote it:

  craft.py rename FILE OLD NEW [OLD NEW]...
      Rewrite the tar in FILE (a volume or sigtar; gzip when the name ends in .gz, else plain)
      renaming every entry whose path is OLD to NEW, whatever its kind prefix
      (snapshot/, diff/, deleted/, signature/, multivol_*/.../N). Paths are raw bytes given
      with \\xNN escapes allowed.

  craft.py manifest MANIFEST [--rehash VOLNUM FILE]... [--replace OLD NEW]...
      Set the SHA1 of volume VOLNUM to that of FILE (as stored: the hash covers the gzip file),
      and replace path OLD by NEW in StartingPath/EndingPath and Filelist lines (quoted the
      way duplicity quotes).
"""
import gzip
import hashlib
import io
import re
import sys
import tarfile


def arg_bytes(s):
    raw = s.encode("utf-8", "surrogateescape")
    return re.sub(rb"\\x([0-9a-fA-F]{2})", lambda m: bytes([int(m.group(1), 16)]), raw)


def split_entry(name):
    """(kind, path, chunk) of an entry name, chunk None unless multivol."""
    name = name.rstrip(b"/")
    kind, _, rest = name.partition(b"/")
    if kind.startswith(b"multivol_"):
        path, _, chunk = rest.rpartition(b"/")
        return kind, path, chunk
    return kind, rest, None


def join_entry(kind, path, chunk):
    name = kind + b"/" + path
    if chunk is not None:
        name += b"/" + chunk
    return name


def rename(path, pairs):
    with open(path, "rb") as f:
        data = f.read()
    gz = path.endswith(".gz")
    if gz:
        data = gzip.decompress(data)
    src = tarfile.open(
        fileobj=io.BytesIO(data), mode="r:", encoding="utf-8", errors="surrogateescape"
    )
    out = io.BytesIO()
    dst = tarfile.open(
        fileobj=out,
        mode="w:",
        format=tarfile.PAX_FORMAT,
        encoding="utf-8",
        errors="surrogateescape",
    )
    renamed = 0
    for ti in src:
        name = ti.name.encode("utf-8", "surrogateescape")
        kind, p, chunk = split_entry(name)
        if p in pairs:
            ti.name = join_entry(kind, pairs[p], chunk).decode("utf-8", "surrogateescape")
            ti.pax_headers = {k: v for k, v in ti.pax_headers.items() if k != "path"}
            renamed += 1
        body = src.extractfile(ti) if ti.isreg() else None
        dst.addfile(ti, body)
    dst.close()
    if renamed == 0:
        raise SystemExit("rename: no entry of %s matched %r" % (path, list(pairs)))
    data = out.getvalue()
    if gz:
        data = gzip.compress(data, compresslevel=6, mtime=0)
    with open(path, "wb") as f:
        f.write(data)


def quote(path):
    special = b" \t\n\r\x0b\x0c\\\"'"
    if not any(b in special for b in path):
        return path
    out = b'"'
    for b in path:
        out += b"\\x%02x" % b if b in special else bytes([b])
    return out + b'"'


def manifest(path, rehash, replace):
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    volume = None
    done = set()
    for i, line in enumerate(lines):
        m = re.match(rb"Volume (\d+):", line)
        if m:
            volume = int(m.group(1))
            continue
        words = line.split()
        if not words:
            continue
        if words[0] == b"Hash" and volume in rehash:
            with open(rehash[volume], "rb") as f:
                digest = hashlib.sha1(f.read()).hexdigest().encode()
            lines[i] = b"    Hash SHA1 " + digest
            done.add(volume)
        elif words[0] in (b"StartingPath", b"EndingPath") and len(words) >= 2:
            for old, new in replace:
                if words[1] == quote(old):
                    lines[i] = line.replace(quote(old), quote(new), 1)
        elif words[0] in (b"new", b"changed", b"deleted") and len(words) == 2:
            for old, new in replace:
                if words[1] == quote(old):
                    lines[i] = line.replace(quote(old), quote(new), 1)
    missing = set(rehash) - done
    if missing:
        raise SystemExit("manifest: no Hash line for volume(s) %s" % sorted(missing))
    with open(path, "wb") as f:
        f.write(b"\n".join(lines))


def main(argv):
    if len(argv) < 2:
        raise SystemExit(__doc__)
    cmd, args = argv[1], argv[2:]
    if cmd == "rename":
        if len(args) < 3 or len(args) % 2 != 1:
            raise SystemExit(__doc__)
        pairs = {arg_bytes(a): arg_bytes(b) for a, b in zip(args[1::2], args[2::2])}
        rename(args[0], pairs)
    elif cmd == "manifest":
        path, rest = args[0], args[1:]
        rehash, replace = {}, []
        while rest:
            if rest[0] == "--rehash" and len(rest) >= 3:
                rehash[int(rest[1])] = rest[2]
                rest = rest[3:]
            elif rest[0] == "--replace" and len(rest) >= 3:
                replace.append((arg_bytes(rest[1]), arg_bytes(rest[2])))
                rest = rest[3:]
            else:
                raise SystemExit(__doc__)
        manifest(path, rehash, replace)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
