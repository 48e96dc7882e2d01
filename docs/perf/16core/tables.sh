# Issue 17's three tables of one tree on the device machine: ringcomm-bench against MLX and
# gloo on 2, 4 and 8 ranks.  Called by the publish scripts with PYTHONPATH set:
#   bash docs/perf/16core/tables.sh PREFIX LOG
# writes $OUT/PREFIX-Nranks.txt (the command, then the table) and .jsonl; progress and each
# run's exit status go to LOG.
: "${OUT:?OUT must name the folder the tables go to}"
for n in 2 4 8; do
  echo "python3 -m ringcomm.bench -n $n --vs mlx,gloo -b 8 -e 64M -f 4 --op all_sum,all_gather --output $1-${n}ranks.jsonl" > "$OUT/$1-${n}ranks.txt"
  timeout 170 python3 -m ringcomm.bench -n $n --vs mlx,gloo -b 8 -e 64M -f 4 --op all_sum,all_gather \
      --output "$OUT/$1-${n}ranks.jsonl" >> "$OUT/$1-${n}ranks.txt" 2>>"$2"
  echo "n=$n rc=$?" >> "$2"
done
