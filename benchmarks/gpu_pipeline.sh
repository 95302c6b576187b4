#!/usr/bin/env bash
# The whole pipeline on one GPU with resnet38d at 448x448 (issue 9), then
# training stages run again alone in fp32 and with bf16 autocast for images/s
# (RERUNS; issues 4, 7 and 10), and the networks alone on random data (BENCH_HEADS).
#
#   benchmarks/gpu_pipeline.sh [REPORT_DIR]      # from the repository root
#
# Needs snakemake and pydensecrf importable by `python3`, and CUDA. Settings:
# benchmarks/gpu_config.yaml. Environment: WORK (artifacts, default
# /tmp/gpu_results; the reruns go beside it), CORES (default nproc),
# LIMIT_S (default 3600; the H200 run used 480): the script ends within about
# that many seconds (the pipeline is stopped, optional measurements skipped)
# and still writes its report. RERUNS (default "train_affinity:none
# train_affinity:bfloat16 train_cam:bfloat16 train_seg:none train_seg:bfloat16"),
# BENCH_HEADS (default "affinity seg").
# Writes to REPORT_DIR (default gpu_report): env.txt, snakemake.log,
# gpu_util.csv (nvidia-smi every second), summary.txt (per-stage times from
# Snakemake's benchmark files, training images/s from the train logs) and
# artifacts.tar.gz (train logs, summary.csv/json, evaluation JSONs, job logs,
# benchmark TSVs, the throughput reruns' logs), and backbone_affinity.json
# and backbone_<head>.json (benchmarks/bench_backbone_gpu.py --head <head>: the
# network alone).
# Results: benchmarks/RESULTS.md, "GPU run: full pipeline on an H200".
set -uo pipefail

REPORT=${1:-gpu_report}
WORK=${WORK:-/tmp/gpu_results}
CORES=${CORES:-$(nproc)}
LIMIT_S=${LIMIT_S:-3600}
RERUNS=${RERUNS:-"train_affinity:none train_affinity:bfloat16 train_cam:bfloat16 train_seg:none train_seg:bfloat16"}
BENCH_HEADS=${BENCH_HEADS:-"affinity seg"}
CONFIG=benchmarks/gpu_config.yaml
START=$(date +%s)
mkdir -p "$REPORT"
REPORT=$(cd "$REPORT" && pwd)
export PYTHONUNBUFFERED=1
left() { echo $((LIMIT_S - ($(date +%s) - START))); }

# The rules run `python -m psa_core`: make `python` the python3 that has torch.
if ! python -c "import torch" 2>/dev/null; then
    mkdir -p /tmp/pybin && ln -sf "$(command -v python3)" /tmp/pybin/python
    export PATH=/tmp/pybin:$PATH
fi

# One GPU: training, CAM inference, the random walk and the segmentation network
# queue for it (as the commented block of workflow/profiles/default does), so
# that each job's benchmark time is its own.
GPU_RES=(--resources gpu=1 --set-resources train_cam:gpu=1 infer_cam:gpu=1
    train_affinity:gpu=1 random_walk:gpu=1 train_seg:gpu=1 infer_seg:gpu=1)

{
    date -u
    nvidia-smi
    python -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), torch.cuda.get_device_name(0)); print('tf32: matmul', torch.backends.cuda.matmul.allow_tf32, 'cudnn', torch.backends.cudnn.allow_tf32)"
    python -c "import pydensecrf.densecrf, numpy, h5py; print('pydensecrf ok; numpy', numpy.__version__, 'h5py', h5py.__version__)"
    echo "snakemake $(python -m snakemake --version)"
    echo "cores $CORES, nproc $(nproc)"
    git log -1 --format='commit %H %s' 2>/dev/null || true
} > "$REPORT/env.txt" 2>&1
cat "$REPORT/env.txt"
python -c "import snakemake, pydensecrf.densecrf, torch; assert torch.cuda.is_available()" || {
    echo "gpu_pipeline: snakemake, pydensecrf or CUDA missing (see env.txt)"; exit 3; }

nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used,power.draw --format=csv -l 1 \
    > "$REPORT/gpu_util.csv" 2>&1 &
SMI_PID=$!

echo "== pipeline start $(date -u +%T)" | tee "$REPORT/snakemake.log"
T0=$(date +%s.%N)
timeout -s TERM $(($(left) - 45)) \
    python -m snakemake --cores "$CORES" --configfile "$CONFIG" --config output_dir="$WORK" \
    --keep-going "${GPU_RES[@]}" 2>&1 | tee -a "$REPORT/snakemake.log"
RC=${PIPESTATUS[0]}
T1=$(date +%s.%N)
echo "== pipeline rc $RC, wall $(python -c "print(f'{$T1 - $T0:.1f}')") s" | tee -a "$REPORT/snakemake.log"

# Retrain one rule alone on a copy of the finished artifacts, with amp = $2.
rerun() {  # rule amp
    local dir=${WORK}_rerun_$1_$2
    rm -rf "$dir" && cp -a "$WORK" "$dir"
    echo "== $1 amp=$2 start $(date -u +%T)" | tee -a "$REPORT/snakemake.log"
    timeout -s TERM $(($(left) - 30)) python -m snakemake --cores "$CORES" --configfile "$CONFIG" \
        --config output_dir="$dir" amp="$2" --forcerun "$1" --until "$1" \
        --rerun-triggers mtime "${GPU_RES[@]}" >> "$REPORT/snakemake.log" 2>&1
    echo "== $1 amp=$2 rc $?" | tee -a "$REPORT/snakemake.log"
}
# Each rerun needs its rule to have finished in the pipeline run.
for run in $RERUNS; do
    set -- ${run/:/ }
    weights=$WORK/${1#train_}/weights.pt
    if [ ! -e "$weights" ] || [ "$(left)" -lt 100 ]; then
        echo "== skipped $run: no $1 output, or $(left) s left of LIMIT_S" | tee -a "$REPORT/snakemake.log"
        continue
    fi
    rerun "$1" "$2"
done
# The network alone on random data (no data loading): fp32 without TF32, TF32, bf16 + channels_last.
for head in $BENCH_HEADS; do
    [ "$(left)" -ge 90 ] || break
    echo "== bench_backbone_gpu.py --head $head start $(date -u +%T)" | tee -a "$REPORT/snakemake.log"
    PYTHONPATH=.:${PYTHONPATH:-} timeout -s TERM $(($(left) - 30)) python benchmarks/bench_backbone_gpu.py \
        --head "$head" --steps 15 --json "$REPORT/backbone_$head.json" 2>&1 | tee -a "$REPORT/snakemake.log"
done
kill "$SMI_PID" 2>/dev/null

python - "$WORK" "$REPORT/summary.txt" <<'EOF'
"""Per-stage times from the benchmark TSVs; images/s from the train logs."""
import csv, sys
from collections import defaultdict
from pathlib import Path

work, report = Path(sys.argv[1]), Path(sys.argv[2])
lines = [f"artifacts: {work}", "", "job benchmarks (s = wall seconds, max_rss MB, mean_load %):"]
per_rule = defaultdict(list)
for tsv in sorted((work / "benchmarks").rglob("*.tsv")):
    rows = list(csv.DictReader(tsv.open(), delimiter="\t"))
    if not rows:
        continue
    rule = tsv.relative_to(work / "benchmarks").parts[0].removesuffix(".tsv")
    row = rows[-1]
    per_rule[rule].append(row)
    lines.append(f"  {tsv.relative_to(work / 'benchmarks')}: s {float(row['s']):.2f} "
                 f"max_rss {row['max_rss']} mean_load {row['mean_load']} cpu_time {row['cpu_time']}")
lines += ["", f"{'rule':24s} {'jobs':>4s} {'total s':>8s} {'max s':>7s} {'max RSS MB':>10s}"]
for rule, rows in per_rule.items():
    s = [float(r["s"]) for r in rows]
    rss = max(float(r["max_rss"]) if r["max_rss"] not in ("", "-", "NA") else 0 for r in rows)
    lines.append(f"{rule:24s} {len(rows):4d} {sum(s):8.1f} {max(s):7.1f} {rss:10.0f}")
lines.append(f"{'sum of job times':24s} {'':4s} {sum(float(r['s']) for rs in per_rule.values() for r in rs):8.1f}")


def throughput(log, batch):
    """images/s of the first logged window and of the rest (steady state)."""
    rows = [r for r in csv.DictReader(log.open()) if r["phase"] == "train"]
    if not rows:
        return "no train rows"
    prev, windows = 0, []
    for r in rows:
        steps = int(r["step"]) - prev
        prev = int(r["step"])
        ips = float(r["images_per_s"])
        windows.append((steps * batch, steps * batch / ips))
    rest = windows[1:] or windows
    steady = sum(n for n, _ in rest) / sum(t for _, t in rest)
    return (f"{prev} steps; first window {windows[0][0] / windows[0][1]:.1f} img/s, "
            f"later windows {steady:.1f} img/s; per row: "
            + ", ".join(f"{float(r['images_per_s']):.1f}" for r in rows))


lines += ["", "training images/s (from train_log.csv):"]
import yaml
cfg = yaml.safe_load(Path("benchmarks/gpu_config.yaml").read_text())
runs = [("pipeline", work)] + [
    (p.name.removeprefix(work.name + "_"), p) for p in sorted(work.parent.glob(work.name + "_rerun_*"))
]
sections = {"cam": "cam", "affinity": "affinity", "seg": "segmentation"}
for name, root in runs:
    for stage, section in sections.items():
        log = root / stage / "train_log.csv"
        if log.exists() and (name == "pipeline" or f"train_{stage}" in name):
            lines.append(f"  {name} {stage}: {throughput(log, cfg[section]['batch_size'])}")
summary = work / "summary.csv"
if summary.exists():
    lines += ["", "summary.csv:", summary.read_text()]
report.write_text("\n".join(lines) + "\n")
print(report.read_text())
EOF

# Everything else in one archive.
W=$(basename "$WORK")
cd "$(dirname "$WORK")" && tar czf "$REPORT/artifacts.tar.gz" --ignore-failed-read \
    "$W"/{summary.csv,summary.json,cam/train_log.csv,affinity/train_log.csv,seg/train_log.csv,seg/model/model.json,cam/eval,crf/eval,rw/eval,seg/eval,logs,benchmarks,report} \
    "$W"_rerun_*/{cam/train_log.csv,affinity/train_log.csv,seg/train_log.csv,logs/train_*.log,benchmarks/train_*.tsv} 2>/dev/null
echo "== done after $(($(date +%s) - START)) s, pipeline rc $RC"
exit "$RC"
