"""Scores `joulegate log-power` CSVs against nvml_probe's 1 ms reads of the same GPU's counter.

Usage: compare.py OUT_DIR (holding probe.csv and logpower*.csv from check.sh). The truth is the
counter's own timeline: constant power between two reads at which it changed. A log's times are
relative to its start, so each is aligned to the probe by the offset (-1 s to +3 s from the probe's first read, 1 ms steps) that
best matches its 250 ms windows. Prints, per log, the |error| of its ticks' energy (median, p95) at
the tick (50 ms), over 250 ms and over 1 s windows, and its total against the counter's."""
import bisect
import csv
import glob
import os
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "."
rows = list(csv.DictReader(open(os.path.join(out, "probe.csv"))))
t = [int(r["unix_ns"]) / 1e9 for r in rows if r["energy_mj"]]
e = [int(r["energy_mj"]) / 1e3 for r in rows if r["energy_mj"]]
# Change points: (time, cumulative joules); between two, power is constant.
pts = [(t[0], e[0])] + [(t[i], e[i]) for i in range(1, len(t)) if e[i] != e[i - 1]]
pt_t = [p[0] for p in pts]


def cum(x):
    """Counter energy at time x, linear between change points."""
    i = bisect.bisect_right(pt_t, x)
    if i <= 0:
        return pts[0][1]
    if i >= len(pts):
        return pts[-1][1]
    (a, ea), (b, eb) = pts[i - 1], pts[i]
    return ea + (eb - ea) * (x - a) / (b - a)


def quantiles(errs):
    errs = sorted(errs)
    if not errs:
        return "n/a"
    return f"median {100 * errs[len(errs) // 2]:5.1f} %  p95 {100 * errs[int(len(errs) * 0.95)]:5.1f} %"


for path in sorted(glob.glob(os.path.join(out, "logpower*.csv"))):
    log = [r for r in csv.DictReader(open(path)) if r["energy_j"]]
    ticks = []
    for a, b in zip(log, log[1:]):
        ticks.append((float(a["time_s"]), float(b["time_s"]), float(b["energy_j"]) - float(a["energy_j"])))
    # The probe started first; the log's origin is its first tick's start on the same machine.
    start = pt_t[0]
    lo, hi = pt_t[0] + 1.0, pt_t[-1] - 1.5

    def windows(offset, width):
        acc = {}
        for a, b, j in ticks:
            k = int((a + offset - start) // width)
            acc.setdefault(k, [a + offset, b + offset, 0.0])
            w = acc[k]
            w[1] = b + offset
            w[2] += j
        return [w for w in acc.values() if lo <= w[0] and w[1] <= hi]

    def cost(offset):
        return sum((j - (cum(b) - cum(a))) ** 2 for a, b, j in windows(offset, 0.25))

    # Log time 0 is within a few seconds after the probe's first read.
    coarse = min((cost(start + o / 1000), o) for o in range(-1000, 3001, 5))[1]
    fine = min((cost(start + o / 1000), o) for o in range(coarse - 5, coarse + 6))[1]
    best = start + fine / 1000
    print(f"{os.path.basename(path)}: log time 0 = probe's first read {fine:+d} ms, {len(ticks)} ticks")
    for width in (0.0, 0.25, 1.0):
        ws = [(a + best, b + best, j) for a, b, j in ticks if lo <= a + best and b + best <= hi] if width == 0 else windows(best, width)
        errs = [abs(j / (cum(b) - cum(a)) - 1) for a, b, j in ws if cum(b) - cum(a) > 0]
        name = "tick" if width == 0 else f"{int(width * 1000)} ms"
        print(f"  {name:>7}: {quantiles(errs)}")
    tot = sum(j for a, b, j in ticks if lo <= a + best and b + best <= hi)
    tru = sum(cum(b + best) - cum(a + best) for a, b, j in ticks if lo <= a + best and b + best <= hi)
    print(f"  total over the common span: {tot:.1f} J vs counter {tru:.1f} J ({100 * (tot / tru - 1):+.2f} %)")
