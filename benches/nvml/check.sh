#!/usr/bin/env bash
# NVML on real hardware, one run (~3 min): see the README, "NVML on real hardware".
# Usage: benches/nvml/check.sh BIN_DIR OUT_DIR, BIN_DIR holding release builds of `joulegate` and
# the `nvml_probe` example. Writes OUT_DIR/report.txt and the CSV/JSON files it names.
# 1. Alone (one NVML client at a time): nvml_probe at 1 ms on the idle GPU, at 50 ms, and at 1 ms
#    under full load; `joulegate log-power` at 50 ms and 100 ms, and at 50 ms with the counter read
#    every 1000 ms (`nvml:counter_ms=1000`), on the idle GPU, with its CPU time.
# 2. Together, under benches/nvml/gpu_load.py's phases (idle, full, 20 pulses, half): nvml_probe at
#    1 ms (probe.csv, phases.csv for step response), log-power at 50 ms with the counter read at
#    every sample (logpower50.csv) and every 1000 ms (logpower_sparse.csv), and `joulegate serve
#    --meter nvml:counter_ms=1000` in front of mock-upstream with a request every ~0.3 s, then its
#    /metrics, /stats and /requests, and its CPU time. benches/nvml/compare.py scores both logs
#    against the probe's counter.
set -u
BIN=$1; OUT=$2; HERE=$(cd "$(dirname "$0")" && pwd)
R="$OUT/report.txt"; T=$(mktemp -d)
mkdir -p "$OUT"
section() { echo; echo "=== $*"; } >> "$R"
section nvidia-smi; nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.sm --format=csv >> "$R" 2>&1
section "probe alone, idle, 1 ms"; "$BIN/nvml_probe" --seconds 8 --poll-us 1000 >> "$R" 2>&1
section "probe alone, idle, 50 ms"; "$BIN/nvml_probe" --seconds 5 --poll-us 50000 >> "$R" 2>&1
python3 "$HERE/gpu_load.py" "$T/phases_full.csv" full > "$T/load_full.txt" 2>&1 &
sleep 4
section "probe alone, full load, 1 ms"; "$BIN/nvml_probe" --seconds 8 --poll-us 1000 >> "$R" 2>&1
wait
section "log-power alone, idle, 50 ms, 15 s"; { time "$BIN/joulegate" log-power --meter nvml --interval-ms 50 --duration-s 15 --summary -o /dev/null ; } >> "$R" 2>&1
section "log-power alone, idle, 100 ms, 10 s"; { time "$BIN/joulegate" log-power --meter nvml --interval-ms 100 --duration-s 10 --summary -o /dev/null ; } >> "$R" 2>&1
section "log-power alone, idle, 50 ms, counter every 1000 ms, 15 s"; { time "$BIN/joulegate" log-power --meter nvml:counter_ms=1000 --interval-ms 50 --duration-s 15 --summary -o /dev/null ; } >> "$R" 2>&1

"$BIN/nvml_probe" --seconds 65 --poll-us 1000 --csv "$OUT/probe.csv" > "$T/probe.txt" 2>&1 &
PROBE=$!
( time "$BIN/joulegate" log-power --meter nvml --interval-ms 50 --duration-s 65 --summary -o "$OUT/logpower50.csv" ) > "$T/logpower50.txt" 2>&1 &
( time "$BIN/joulegate" log-power --meter nvml:counter_ms=1000 --interval-ms 50 --duration-s 65 --summary -o "$OUT/logpower_sparse.csv" ) > "$T/logpower_sparse.txt" 2>&1 &
"$BIN/joulegate" mock-upstream --engine --listen 127.0.0.1:18000 > "$T/mock.txt" 2>&1 &
MOCK=$!
( time "$BIN/joulegate" serve --meter nvml:counter_ms=1000 --upstream http://127.0.0.1:18000 --listen 127.0.0.1:19000 --admin-listen 127.0.0.1:19101 ) > "$T/serve.txt" 2>&1 &
for _ in $(seq 100); do curl -sf http://127.0.0.1:19101/readyz > /dev/null && break; sleep 0.1; done
python3 "$HERE/gpu_load.py" "$OUT/phases.csv" > "$T/load.txt" 2>&1 &
LOAD=$!
i=0
while kill -0 $LOAD 2> /dev/null; do
  i=$((i + 1))
  if (( i % 2 )); then s=false; else s=true; fi
  curl -s -D - -o /dev/null http://127.0.0.1:19000/v1/chat/completions -H 'content-type: application/json' \
    -d "{\"model\":\"tiny\",\"stream\":$s,\"max_tokens\":$(( 16 + i % 64 )),\"messages\":[{\"role\":\"user\",\"content\":\"request $i $(head -c $(( 40 * (i % 50) )) /dev/zero | tr '\0' 'a')\"}]}" \
    >> "$T/headers.txt" 2>&1
  sleep 0.3
done
wait $PROBE
sleep 2
curl -s http://127.0.0.1:19101/metrics > "$OUT/metrics.txt"
curl -s http://127.0.0.1:19101/stats > "$OUT/stats.json"
curl -s 'http://127.0.0.1:19101/requests?limit=400' > "$OUT/requests.json"
pkill -INT -f "joulegate serve"; kill $MOCK
wait
section "together: requests sent $i, 200s $(grep -c '^HTTP/1.1 200' "$T/headers.txt"), with x-energy-joules $(grep -c '^x-energy-joules:' "$T/headers.txt")"
for f in probe logpower50 logpower_sparse serve load; do section "together: $f"; tail -12 "$T/$f.txt" >> "$R"; done
section "together: first response heads"; head -40 "$T/headers.txt" >> "$R"
section "compare.py"; python3 "$HERE/compare.py" "$OUT" >> "$R" 2>&1
cat "$R"
