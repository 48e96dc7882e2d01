# The 1-4 MiB all_gather on lanes, on one thread, and (VAR, optional) in another tree, on the
# device machine, from the repository root with MLX's wheels in .whl/ (DEVELOPERS.md):
#   [VAR=<checkout>] [REPS=2] bash docs/perf/16core/gather-2m-threads.sh
# 2, 4 and 8 ranks; per round this tree with RINGCOMM_THREADS=auto (new) and 1 (t1), then VAR
# with auto, each against MLX in the same invocation.  Output: /tmp/res/gather-2m.txt, packed
# into $OUT/all.tgz.
BASE=. . docs/perf/16core/ab-setup.sh
{
  date -u; nproc; lscpu | grep "Model name"; uptime
  for rep in $(seq "${REPS:-2}"); do for n in 2 4 8; do for cfg in new t1 ${VAR:+var}; do
    tree=$cfg threads=auto
    [ $cfg = t1 ] && tree=new threads=1
    RINGCOMM_THREADS=$threads in_tree $tree "rep=$rep n=$n cfg=$cfg RINGCOMM_THREADS=$threads" \
      python3 -m ringcomm.bench -n $n --vs mlx -b 1M -e 4M -f 2 --iters 60 --op all_gather |
      grep -v "^#  \|pass on\|^#$\|^# all_gather"
  done; done; done
  echo "elapsed $SECONDS s"
} > $R/gather-2m.txt 2>&1
pack
