"""Known GPU load for benches/nvml/check.sh: idle, full, pulsed and half-load phases (or, with a
second argument `full`, one 12 s full-load phase), each phase's
start and end written as wall-clock nanoseconds (the clock nvml_probe's CSV uses) to phases.csv.

A phase's end is taken after torch.cuda.synchronize(), so it is when the GPU finished its work."""
import sys
import time

import torch

out = sys.argv[1] if len(sys.argv) > 1 else "phases.csv"
mode = sys.argv[2] if len(sys.argv) > 2 else "phases"
rows = []


def idle(name, seconds):
    t0 = time.time_ns()
    time.sleep(seconds)
    rows.append((name, t0, time.time_ns()))


def load(name, seconds, n):
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    torch.cuda.synchronize()
    t0 = time.time_ns()
    deadline = t0 + int(seconds * 1e9)
    while time.time_ns() < deadline:
        for _ in range(4):
            torch.mm(a, b)
        torch.cuda.synchronize()
    rows.append((name, t0, time.time_ns()))


load("warmup", 1.0, 4096)
if mode == "full":
    # One long full-load phase (call latency under load).
    load("full", 12, 8192)
else:
    idle("idle", 6)
    load("full", 8, 8192)
    idle("idle", 6)
    for _ in range(20):
        load("pulse", 0.25, 8192)
        idle("gap", 0.25)
    idle("idle", 4)
    load("half", 6, 2048)
    idle("idle", 4)
with open(out, "w") as f:
    f.write("phase,start_ns,end_ns\n")
    for name, t0, t1 in rows:
        f.write(f"{name},{t0},{t1}\n")
