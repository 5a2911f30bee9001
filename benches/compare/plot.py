#!/usr/bin/env python3
"""Plots each engine's progress through the input: events committed per second and the lag
(the input's end minus the engine's committed offsets) over time, from the samples
Progress.java took every 500 ms.

    plot.py OUT.png ENGINE=progress.txt ...
"""
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    out = sys.argv[1]
    fig, (rate, lag) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    for arg in sys.argv[2:]:
        engine, path = arg.split("=", 1)
        t, done, end = [], [], []
        with open(path) as f:
            for line in f:
                a, b, c = line.split()
                t.append(float(a))
                done.append(int(b))
                end.append(int(c))
        if len(t) < 2:
            continue
        # Committed offsets move in steps (one per transaction or checkpoint): rate over 2 s.
        rt, rv = [], []
        for i in range(len(t)):
            j = max(0, i - 4)
            if t[i] > t[j]:
                rt.append(t[i])
                rv.append((done[i] - done[j]) / (t[i] - t[j]) / 1000)
        rate.plot(rt, rv, label=engine)
        lag.plot(t, [(e - d) / 1000 for d, e in zip(done, end)], label=engine)
    rate.set_ylabel("input committed, k events/s")
    lag.set_ylabel("lag, k events")
    lag.set_xlabel("seconds from the engine's start")
    rate.set_title("Same topic, same broker, one core each (taskset -c 1)")
    for ax in (rate, lag):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)


if __name__ == "__main__":
    main()
