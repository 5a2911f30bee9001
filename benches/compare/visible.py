#!/usr/bin/env python3
"""Window end -> first visible in the output topic, per engine, from Visible.java's files.

Usage: visible.py SPAN_START_MS SPAN_END_MS NAME=visible.tsv...

Counts the MINUTE and VELOCITY_5M windows that start in the span and end at least two minutes
before it does (closed by the input's own watermark: Flink's moves with the input only, and
the last minute needs input that never comes), and only those every engine emitted: the same
windows for each. Prints,
per kind and engine, how many and the latency's p50, p90, p99 and max in seconds (nearest
rank). Fails when an engine emitted none, or when the engines made different windows visible.
The max includes windows whose only events were delivered minutes late (the workload's late
deliveries): first visible minutes after their end for every engine alike.
"""
import math
import sys


def load(path, lo, hi):
    seen = {}
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if not line.endswith("\n") or len(parts) != 6:
                continue  # a line being written
            received, kind, account, content, start, end = parts
            start, end = int(start), int(end)
            if kind in ("MINUTE", "VELOCITY_5M") and start >= lo and end <= hi:
                seen[(kind, account, content, start)] = int(received) - end
    return seen


def rank(sorted_values, q):
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def main():
    span_start, span_end = int(sys.argv[1]), int(sys.argv[2])
    engines = [a.split("=", 1) for a in sys.argv[3:]]
    # Windows ending at least two minutes before the input does.
    data = {name: load(path, span_start, span_end - 120_000) for name, path in engines}
    for name, d in data.items():
        if not d:
            sys.exit(f"{name}: no window visible in its topic")
    common = set.intersection(*(set(d) for d in data.values()))
    union = set.union(*(set(d) for d in data.values()))
    print(f"windows every engine emitted: {len(common)} (of {len(union)} emitted by any; "
          + ", ".join(f"{n} {len(d)}" for n, d in data.items()) + ")")
    print("kind          engine          windows   p50 s   p90 s   p99 s   max s")
    for kind in ("MINUTE", "VELOCITY_5M"):
        for name, d in data.items():
            v = sorted(d[k] / 1000 for k in common if k[0] == kind)
            if not v:
                continue
            print(f"{kind:<13} {name:<15} {len(v):>7} {rank(v, 0.5):>7.1f} {rank(v, 0.9):>7.1f} "
                  f"{rank(v, 0.99):>7.1f} {v[-1]:>7.1f}")
    if common != union:
        sys.exit("the engines made different windows visible: "
                 + ", ".join(f"{n} {len(set(d) - common)} of its own" for n, d in data.items()))


if __name__ == "__main__":
    main()
