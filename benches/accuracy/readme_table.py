#!/usr/bin/env python3
"""The README's accuracy table from two runs of the bench on one seed.

    ACCURACY_SEED=11 target/release/deps/accuracy-* --bench > default.txt
    ACCURACY_SETTLED_MODE=1 ACCURACY_SEED=11 target/release/deps/accuracy-* --bench > settled.txt
    benches/accuracy/readme_table.py default.txt settled.txt

Per workload, ranges over the cost models and counter periods (whole per cents): the record's
median / p95, its active energy's median, the settled figure's median / p95 and wait p50 / p99
(from the settled-mode run, as `response_energy = "settled"` runs), the provisional figure's
median / p95, the naive split's median, and whether every cell's books were exact.
"""
import sys

ORDER = ["steady", "bursty", "prefill-heavy", "decode-heavy", "mixed-long", "n>1", "aborts",
         "queueing"]


def cells(path):
    out = {}
    for line in open(path):
        f = line.split()
        if len(f) >= 14 and f[1].isdigit() and "/" in f[3]:
            out[(f[0], f[1], f[2])] = f
    return out


def pair(s):
    a, b = s.split("/")
    return float(a), float(b)


def span(values):
    lo, hi = round(min(values)), round(max(values))
    return f"{lo}–{hi}" if lo != hi else f"{lo}"


def main():
    default, settled = cells(sys.argv[1]), cells(sys.argv[2])
    print("| workload | record median / p95 | active median | settled median / p95 | settled wait"
          " p50 / p99 (ms) | provisional median / p95 | naive median | books |")
    print("|---|---|---|---|---|---|---|---|")
    for w in ORDER:
        rows = [f for k, f in default.items() if k[2] == w]
        srows = [f for k, f in settled.items() if k[2] == w]
        rec = [pair(f[3]) for f in rows]
        act = [pair(f[4])[0] for f in rows]
        st = [pair(f[5]) for f in srows]
        wait = [pair(f[6]) for f in srows]
        prov = [pair(f[7]) for f in rows]
        naive = [pair(f[10])[0] for f in rows]
        books = "exact" if all(f[13] == "exact" for f in rows + srows) else "NOT exact"
        print(f"| {w} | {span([r[0] for r in rec])} / {span([r[1] for r in rec])} "
              f"| {span(act)} | {span([s[0] for s in st])} / {span([s[1] for s in st])} "
              f"| {span([x[0] for x in wait])} / {span([x[1] for x in wait])} "
              f"| {span([p[0] for p in prov])} / {span([p[1] for p in prov])} | {span(naive)} "
              f"| {books} |")


if __name__ == "__main__":
    main()
