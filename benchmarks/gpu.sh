#!/usr/bin/env bash
# The GPU benchmarks in one go: batch throughput (fev UN, AR(1), RI + slope, and the fev UN
# scaling to B = 100,000), power, and the nested/crossed fits and bootstraps; jaxlmm only (no R
# on the device machine).  Budget: under 8 minutes on one H200.  Ends with one table.
#
#   bash benchmarks/gpu.sh            # logs in $OUT (default: a temporary directory)
#
# Needs JAX's CUDA build (pip install "jax[cuda12]").  Runs on a CPU too (slowly, with -B 1000).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
export JAXLMM_CACHE=${JAXLMM_CACHE:-0}   # compile times as a new user sees them
python -c "import jax; print('devices:', jax.devices())" | tee "$OUT/devices.txt"
B=10000
python -c "import jax, sys; sys.exit(jax.devices()[0].platform != 'gpu')" || B=1000
timeout 270 python benchmarks/batch.py --no-r -B "$B" > "$OUT/batch.txt" 2>&1; echo "batch: rc $?" >> "$OUT/rc.txt"
timeout 60 python benchmarks/power.py --no-r --nsim 5000 > "$OUT/power.txt" 2>&1; echo "power: rc $?" >> "$OUT/rc.txt"
timeout 150 python benchmarks/crossed.py --no-r --boot 10000 --json "$OUT/crossed.json" > "$OUT/crossed.txt" 2>&1
echo "crossed: rc $?" >> "$OUT/rc.txt"
cat "$OUT/rc.txt"
python - "$OUT" <<'PY'
import json, re, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = []
batch = out / "batch.txt"
if batch.exists():
    last = [l for l in batch.read_text().splitlines() if l.startswith("{")]
    if last:
        d = json.loads(last[-1])
        for w in d["workloads"]:
            rows.append((w["workload"], f"B = {w['B']}", f"{w['ours fits/s']:,.0f} fits/s", f"{w['compile s']:.1f}"))
        for s in d["scaling"]:
            rows.append(("fev UN bootstrap scaling", f"B = {s['B']}", f"{s['fits/s']:,.0f} fits/s", "-"))
power = out / "power.txt"
if power.exists():
    for l in power.read_text().splitlines():
        m = re.match(r"(jaxlmm.*?)\s{2,}([\d.]+)\s+(\d+)$", l)
        if m:
            rows.append(("power: " + m.group(1), "", f"{int(m.group(3)):,} fits/s", ""))
cj = out / "crossed.json"
if cj.exists():
    d = json.loads(cj.read_text())
    for r in d["fits"]:
        rows.append((r["what"], f"N = {r['N']}", f"fit {r['fit_s']:.3f} s", f"{r['compile_s']:.1f}"))
    for r in d["bootstrap"]:
        rows.append((r["what"] + " bootstrap", f"B = {r['B']}", f"{r['fits_per_s']:,.0f} fits/s", f"{r['compile_s']:.1f}"))
print()
print("| workload | size | jaxlmm | compile s |")
print("|---|---|---|---|")
for r in rows:
    print("| " + " | ".join(r) + " |")
PY
