# The 1-4 MiB all_gather on lanes, on one thread, and (VAR, optional) in another tree, on the
# device machine, from the repository root with MLX's wheels in .whl/ (DEVELOPERS.md):
#   [VAR=<checkout>] [REPS=2] bash docs/perf/16core/gather-2m-threads.sh
# 2, 4 and 8 ranks; per round this tree with RINGCOMM_THREADS=auto (new) and 1 (t1), then VAR
# with auto, each against MLX in the same invocation.  Output: $OUT/gather-2m.txt.
set -u
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONUNBUFFERED=1
here=$PWD
{
  date -u; nproc; lscpu | grep "Model name"; uptime
  for rep in $(seq "${REPS:-2}"); do for n in 2 4 8; do for cfg in new t1 ${VAR:+var}; do
    root=$here threads=auto
    [ $cfg = var ] && root=$VAR
    [ $cfg = t1 ] && threads=1
    echo "== rep=$rep n=$n cfg=$cfg: RINGCOMM_THREADS=$threads ringcomm-bench -n $n --vs mlx -b 1M -e 4M -f 2 --iters 60 --op all_gather"
    (cd "$root" && RINGCOMM_THREADS=$threads PYTHONPATH=/tmp/site:$root timeout 60 python3 -m ringcomm.bench -n $n --vs mlx -b 1M -e 4M -f 2 --iters 60 --op all_gather 2>&1 | grep -v "^#  \|pass on\|^#$\|^# all_gather")
  done; done; done
  echo "elapsed $SECONDS s"
} > "$OUT/gather-2m.txt" 2>&1
