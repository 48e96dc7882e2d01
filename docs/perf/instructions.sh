# Instructions per 8-byte all_sum of the Python path (this 2-core machine, deterministic):
#   bash docs/perf/instructions.sh REPO   (REPO: a checkout, e.g. a `git archive` of the base)
# Needs valgrind; PYTHON must be the interpreter itself, not a shim (pyenv's is a script).
PYTHON=${PYTHON:-$(python3 -c 'import sys; print(sys.executable)')}
here=$(cd "$(dirname "$0")" && pwd)
run() {
  OPENBLAS_NUM_THREADS=1 PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/dev/null \
    "$PYTHON" "$here/instructions.py" "$1" "$2" 2>&1 | awk '/Collected/ {print $4}'
}
a=$(run "$1" 200); b=$(run "$1" 2200)
echo "$1: $(( (b - a) / 2000 )) instructions per call"
