# A variant against this tree on the device machine (issue 17, the 2 MiB all_gather): from the
# repository root, with MLX's wheels in .whl/ (DEVELOPERS.md):
#   VAR=<checkout of the variant> bash docs/perf/16core/linger-ab.sh
# latency.py per tree (three alternating rounds), the A/B of 512 KiB-32 MiB on 2, 4 and 8 ranks
# (three alternating rounds), the 2 MiB cells against MLX per tree, allgather_timeline.py and
# mixed_loop.py per tree.  Output: /tmp/res/ab.txt, packed into $OUT/all.tgz.
BASE=. . docs/perf/16core/ab-setup.sh
trees="new var"
{
  date -u; nproc; lscpu | grep "Model name"; uptime
  for rep in 1 2 3; do for tree in $trees; do latency $tree $rep; done; done
  pack
  for rep in 1 2 3; do for tree in $trees; do
    for n in 2 4 8; do bench_ab $tree $rep $n; done
  done; pack; done
  for tree in $trees; do
    for n in 2 4 8; do
      in_tree $tree "vs MLX tree=$tree" python3 -m ringcomm.bench -n $n --vs mlx -b 2M -e 2M \
        --op all_gather,all_sum | grep -v "^#  \|pass on\|^#$"
    done
    for script in allgather_timeline.py mixed_loop.py; do
      in_tree $tree "$script tree=$tree" python3 -m ringcomm.launch -n 2 "$here/docs/perf/16core/$script"
    done
  done
  uptime; echo "elapsed $SECONDS s"
} > $R/ab.txt 2>&1
pack
