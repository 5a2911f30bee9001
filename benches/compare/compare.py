#!/usr/bin/env python3
"""Compares an engine's MINUTE and VELOCITY_5M interaction counts with the generator's truth.

    compare.py EXPECTED.json ENGINE OBSERVED.tsv

OBSERVED.tsv: kind, account_id, content_id ('' for the account), window_start_ms, interactions
(the last revision of every window). The truth is `banter generate --expected`: interactions
per account and per post per minute, duplicates and too-late deliveries excluded. Velocity
windows (5 minutes, hopping every minute) are sums of the truth's minutes, computed here from
DESIGN.md's definition, not read from any engine. Windows whose count is 0 are left out on
both sides (an engine may or may not emit a row for a minute whose events cancel out).
Compared are the windows event time alone closes (as `banter verify` does): those ending by
the minute before the last event's minute; later ones close only once the input has been quiet
for minutes (the idle timeout follows the wall clock).
Exits 1 and prints the first differences when a cell differs.
"""
import json
import sys
from collections import defaultdict

MINUTE = 60_000


def expected_cells(path):
    with open(path) as f:
        e = json.load(f)["expected"]
    cells = {}
    for scope, table in (("account", e["account_minutes"]), ("post", e["content_minutes"])):
        for key, minutes in table.items():
            velocity = defaultdict(int)
            for start, n in minutes.items():
                start = int(start)
                cells[("MINUTE", scope, key, start)] = n
                for end in range(start + MINUTE, start + 6 * MINUTE, MINUTE):
                    velocity[end - 5 * MINUTE] += n
            for start, n in velocity.items():
                cells[("VELOCITY_5M", scope, key, start)] = n
    last_minute = max(int(m) for minutes in e["account_minutes"].values() for m in minutes)
    end = last_minute - MINUTE
    return closed({k: v for k, v in cells.items() if v != 0}, end), end


def closed(cells, end):
    """The cells of windows ending by `end`."""
    span = {"MINUTE": MINUTE, "VELOCITY_5M": 5 * MINUTE}
    return {k: v for k, v in cells.items() if k[3] + span[k[0]] <= end}


def observed_cells(path):
    cells = {}
    with open(path) as f:
        for line in f:
            kind, account, content, start, n = line.rstrip("\n").split("\t")
            if kind not in ("MINUTE", "VELOCITY_5M"):
                continue
            scope, key = ("post", content) if content else ("account", account)
            cells[(kind, scope, key, int(start))] = int(n)
    return {k: v for k, v in cells.items() if v != 0}


def main():
    expected_path, engine, observed_path = sys.argv[1:4]
    want, end = expected_cells(expected_path)
    got = closed(observed_cells(observed_path), end)
    diffs = []
    for k in sorted(set(want) | set(got)):
        if want.get(k, 0) != got.get(k, 0):
            diffs.append((k, want.get(k, 0), got.get(k, 0)))
    by_kind = defaultdict(int)
    for k in want:
        by_kind[k[0]] += 1
    summary = ", ".join(f"{n} {kind}" for kind, n in sorted(by_kind.items()))
    if diffs:
        print(f"{engine}: {len(diffs)} of {len(want)} cells DIFFER from the truth ({summary}):")
        for (kind, scope, key, start), w, g in diffs[:10]:
            print(f"  {kind} {scope} {key} @{start}: truth {w}, {engine} {g}")
        sys.exit(1)
    print(f"{engine}: all {len(want)} non-zero cells equal the truth ({summary})")


if __name__ == "__main__":
    main()
