# Sourced by the publish scripts of this folder (on the device machine, from the repository
# root): MLX from .whl/ into /tmp/site, results under $R (/tmp/res) packed into $OUT/all.tgz by
# `pack`, and the trees of an A/B: base ($BASE), prev ($PREV, optional), new (this tree) and
# var ($VAR, optional); in_tree, latency, python_path and bench_ab run one step of an A/B.
set -u
: "${OUT:?OUT must name the folder the results go to}" "${BASE:?BASE must name a checkout}"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONUNBUFFERED=1
here=$PWD R=/tmp/res SECONDS=0
mkdir -p $R
pack() { tar czf "$OUT/all.tgz" -C $R . ; }
trees="base${PREV:+ prev} new${VAR:+ var}"
root_of() { case $1 in base) echo "$BASE" ;; prev) echo "$PREV" ;; var) echo "$VAR" ;; *) echo "$here" ;; esac; }
# in_tree TREE LABEL CMD...: prints "== LABEL: CMD", then runs CMD (output and errors) in
# TREE's checkout with its code first on the path, for at most a minute.
in_tree() {
  local tree=$1 label=$2 root
  shift 2
  root=$(root_of "$tree")
  echo "== $label: $*"
  (cd "$root" && PYTHONPATH=/tmp/site:$root timeout 60 "$@" 2>&1)
}
# latency TREE REP: one run of latency.py (the label, then its last line: both timings of
# each loop).
latency() {
  in_tree "$1" "latency tree=$1 rep=$2" python3 -m ringcomm.launch -n 2 \
    "$here/docs/perf/16core/latency.py" | sed -n '1p;$p'
}
# python_path TREE: python_path.py on TREE's code.
python_path() {
  in_tree "$1" "tree=$1" python3 "$here/docs/perf/16core/python_path.py" "$(root_of "$1")"
}
# bench_ab TREE REP N: the large-size A/B's ringcomm-bench on N ranks.
bench_ab() {
  in_tree "$1" "A/B tree=$1 rep=$2" python3 -m ringcomm.bench -n "$3" -b 512K -e 32M -f 2 \
    --op all_gather,all_sum | grep -v "^#  \|pass on\|^#$"
}
