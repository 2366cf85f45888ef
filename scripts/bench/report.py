#!/usr/bin/env python3
"""Turns the raw measurements of scripts/bench.sh into the markdown tables of docs/bench.md.

Why a separate step: bench.sh only appends one line per timed run to a TSV file, so a long
run that is interrupted keeps what it measured, and the tables (medians, spreads, ratios,
targets) can be rendered again from the file at any time:

  report.py RESULTS.tsv

Lines of RESULTS.tsv (tab-separated):
  run     SECTION  LABEL  WALL_S  USER_S  SYS_S  MAXRSS_KB  LOAD1
  refs    SECTION  LABEL[,LABEL...]      ratio columns of a section ("x / that row's median")
  title   SECTION  TEXT                  the section's heading (default: SECTION)
  note    SECTION  TEXT                  a line printed under the section's heading
  target  TEXT  SECTION:LABEL  SECTION:LABEL  LIMIT   wall-time ratio of the two, must be <= LIMIT
  rss     TEXT  LIMIT_MB  PREFIX [SECTION[,SECTION...]]
                                          the highest peak RSS of any run whose label starts
                                          with PREFIX (in those sections only, if given),
                                          must be <= LIMIT_MB: a ceiling, so not a median
"""

import statistics
import sys


def fmt(x, digits=2):
    return f"{x:.{digits}f}"


def main():
    runs, refs, titles, notes, targets, rss_targets, order = {}, {}, {}, {}, [], [], []
    with open(sys.argv[1], encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            kind = parts[0]
            if kind == "run":
                section, label = parts[1], parts[2]
                wall, user, sys_, rss, load = (float(x) for x in parts[3:8])
                if section not in order:
                    order.append(section)
                runs.setdefault(section, {}).setdefault(label, []).append((wall, user + sys_, rss / 1024, load))
            elif kind == "refs":
                refs[parts[1]] = parts[2].split(",")
            elif kind == "title":
                titles[parts[1]] = parts[2]
            elif kind == "note":
                notes.setdefault(parts[1], []).append(parts[2])
            elif kind == "target":
                targets.append((parts[1], parts[2], parts[3], float(parts[4])))
            elif kind == "rss":
                sections = parts[4].split(",") if len(parts) > 4 else None
                rss_targets.append((parts[1], float(parts[2]), parts[3], sections))

    def median_wall(key):
        section, label = key.split(":", 1)
        rows = runs.get(section, {}).get(label)
        return statistics.median(r[0] for r in rows) if rows else None

    for section in order:
        print(f"### {titles.get(section, section)}\n")
        for n in notes.get(section, []):
            print(f"{n}\n")
        ref_labels = [r for r in refs.get(section, []) if r in runs[section]]
        head = ["", "wall s (median)", "wall min–max", "CPU s (user+sys)", "peak RSS MB", "runs", "load"]
        head += [f"÷ {r}" for r in ref_labels]
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for label, rows in runs[section].items():
            walls = [r[0] for r in rows]
            wall = statistics.median(walls)
            cells = [
                label,
                fmt(wall),
                f"{fmt(min(walls))}–{fmt(max(walls))}",
                fmt(statistics.median(r[1] for r in rows)),
                fmt(statistics.median(r[2] for r in rows), 1),
                str(len(rows)),
                fmt(statistics.median(r[3] for r in rows), 1),
            ]
            for r in ref_labels:
                base = statistics.median(x[0] for x in runs[section][r])
                cells.append(fmt(wall / base) if base > 0 else "-")
            print("| " + " | ".join(cells) + " |")
        print()

    if targets or rss_targets:
        print("### Targets\n")
        print("| target | measured | limit | met |")
        print("|---|---|---|---|")
        for text, num, den, limit in targets:
            a, b = median_wall(num), median_wall(den)
            if a is None or b is None or b <= 0:
                print(f"| {text} | not measured | ≤ {limit} | - |")
                continue
            ratio = a / b
            print(f"| {text} | {fmt(ratio)} ({fmt(a)} s / {fmt(b)} s) | ≤ {limit} | {'yes' if ratio <= limit else '**no**'} |")
        for text, limit, prefix, sections in rss_targets:
            worst = max(
                (
                    (max(r[2] for r in rows), f"{section}: {label}")
                    for section in order
                    if sections is None or section in sections
                    for label, rows in runs[section].items()
                    if label.startswith(prefix)
                ),
                default=None,
            )
            if worst is None:
                print(f"| {text} | not measured | ≤ {limit:g} MB | - |")
            else:
                print(f"| {text} | {fmt(worst[0], 1)} MB ({worst[1]}) | ≤ {limit:g} MB | {'yes' if worst[0] <= limit else '**no**'} |")
        print()


if __name__ == "__main__":
    main()
