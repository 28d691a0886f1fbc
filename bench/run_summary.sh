#!/usr/bin/env bash
# usage: bench/run_summary.sh OUTDIR BEFORE_CHECKOUT AFTER_CHECKOUT: the commands of bench/README.md's summary table, before and after back to back; each output to OUTDIR/<label>.md (PY: the python to use, default python3; each checkout's code is taken by PYTHONPATH, except by bench_startup.py, which runs the --ref checkout with its own .venv)
set -u
out=$1; before=$2; after=$3; mkdir -p "$out"
py=${PY:-python3}
run() { # label dir args...
  local label=$1 dir=$2; shift 2
  { echo "## $label $(date -u +%H:%M:%S) load: $(cut -d' ' -f1-3 /proc/loadavg)"; echo "\$ $*";
    (cd "$dir" && PYTHONPATH="$dir" $py "$@") 2>&1; echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"; } >> "$out/$label.md"
}
for rep in 1 2; do
  run scale_once "$after" bench/bench_scale.py --child floor,10000,once --seconds 6
  run scale_once_before "$before" bench/bench_scale.py --child trigctl,10000,once --seconds 6
  run scale_once "$after" bench/bench_scale.py --child trigctl,10000,once --seconds 6
done
run scale_spread "$after" bench/bench_scale.py --child floor,10000,spread --seconds 6
run scale_spread "$after" bench/bench_scale.py --child trigctl,10000,spread --seconds 6
run scale50 "$after" bench/bench_scale.py --child floor,50000,spread --seconds 6
run scale50_before "$before" bench/bench_scale.py --child trigctl,50000,spread --seconds 6
run scale50 "$after" bench/bench_scale.py --child trigctl,50000,spread --seconds 6
run scale50 "$after" bench/bench_scale.py --child floor,50000,once --seconds 6
run scale50 "$after" bench/bench_scale.py --child trigctl,50000,once --seconds 6
run rss20 "$after" bench/bench_scale.py --child trigctl,20000,once --seconds 6
run fire_before "$before" bench/bench_fire_throughput.py --variants argv-true --rates max 300 --seconds 8
run fire "$after" bench/bench_fire_throughput.py --variants argv-true run-true --rates max 300 --seconds 8
run files_before "$before" bench/bench_file_reaction.py
run files "$after" bench/bench_file_reaction.py
run files_big "$after" bench/bench_file_reaction.py --big-only
# bench_startup.py runs the --ref checkout itself (its .venv); a PYTHONPATH would make both the same code
(cd "$after" && { echo "## startup $(date -u +%H:%M:%S)"; env -u PYTHONPATH $py bench/bench_startup.py --n 50000 --starts 2 --list-runs 3 --ref "$before" 2>&1; } >> "$out/startup.md")
# each checkout its own cache: a newer trigctl migrates the cached state to a schema the older cannot open
run cli "$after" bench/bench_cli_startup.py --runs 5 --cache "$out/cli-cache-after"
run cli_before "$before" bench/bench_cli_startup.py --runs 5 --cache "$out/cli-cache-before"
echo done >> "$out/DONE"
