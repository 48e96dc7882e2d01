# The latency target's A/B on the device machine: latency.py (an 8-byte all_sum on 2 ranks
# against a raw round trip) per tree in ROUNDS alternating rounds, from the repository root
# with MLX's wheels in .whl/ (DEVELOPERS.md):
#   BASE=<checkout> [VAR=<checkout>] [ROUNDS=5] bash docs/perf/16core/latency-ab.sh
# Output: /tmp/res/latency.txt, packed into $OUT/all.tgz.
. docs/perf/16core/ab-setup.sh
{
  date -u; nproc; lscpu | grep "Model name"; uptime
  for rep in $(seq "${ROUNDS:-5}"); do for tree in $trees; do latency $tree $rep; done; done
  uptime; echo "elapsed $SECONDS s"
} > $R/latency.txt 2>&1
pack
