# The 2 MiB all_gather on one thread against lanes (issue 17), on the device machine, from the
# repository root with MLX's wheels in .whl/ (DEVELOPERS.md):
#   [REPS=3] bash docs/perf/16core/gather-2m-threads.sh
# 2, 4 and 8 ranks, RINGCOMM_THREADS=1 and auto alternating, REPS rounds, each against MLX
# in the same call.  Output: /tmp/res/gather-2m.txt, packed into $OUT/all.tgz.
BASE=. . docs/perf/16core/ab-setup.sh
export PYTHONPATH=/tmp/site:$here
{
  date -u; nproc; uptime
  for rep in $(seq "${REPS:-3}"); do for n in 2 4 8; do for threads in 1 auto; do
    echo "== rep=$rep: RINGCOMM_THREADS=$threads python3 -m ringcomm.bench -n $n --vs mlx -b 1M -e 4M -f 2 --op all_gather"
    RINGCOMM_THREADS=$threads timeout 60 python3 -m ringcomm.bench -n $n --vs mlx -b 1M -e 4M -f 2 --op all_gather 2>&1 | grep -v "^#  \|pass on\|^#$\|^# all_gather"
  done; done; done
  uptime; echo "elapsed $SECONDS s"
} > $R/gather-2m.txt 2>&1
pack
