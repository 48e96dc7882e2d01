# Free-threaded CPython on the device machine (issue 17): ringcomm-bench on 2, 4 and 8 ranks
# under python3.13t with the GIL off (PYTHON_GIL=0) and on (PYTHON_GIL=1: the same interpreter
# and code, so the difference is the GIL), and under the machine's own Python 3.12; then
# latency.py under 3.13t both ways.  From the repository root, with .ft/ made by
# freethreaded-build.sh (carry .ft):
#   bash docs/perf/16core/freethreaded.sh
# Output: $OUT/ft.txt (docs/perf/16core/freethreaded.txt).
set -u
F=/tmp/ft; mkdir -p $F/py $F/site
tar xJf .ft/py313t.tar.xz -C $F/py
for w in .ft/*.whl; do python3 -m zipfile -e $w $F/site; done  # (a wheel is a zip)
PY=$F/py/bin/python3.13t
export PYTHONUNBUFFERED=1
{
  date -u; nproc; uptime
  PYTHONPATH=$F/site:$PWD $PY -c "import sys, numpy, ringcomm; print(sys.version, 'gil', sys._is_gil_enabled(), 'numpy', numpy.__version__)"
  for n in 2 4 8; do for gil in 0 1; do
    echo "== n=$n PYTHON_GIL=$gil: python3.13t -m ringcomm.bench -n $n -b 32K -e 32M -f 4 --op all_sum,all_gather"
    PYTHON_GIL=$gil PYTHONPATH=$F/site:$PWD timeout ${FT_TIMEOUT:-60} $PY -m ringcomm.bench -n $n -b 32K -e 32M -f 4 --op all_sum,all_gather 2>&1 | grep -v "^#  \|pass on\|^#$"
  done
    echo "== n=$n python3 (the machine's 3.12): python3 -m ringcomm.bench -n $n -b 32K -e 32M -f 4 --op all_sum,all_gather"
    PYTHONPATH=$PWD timeout ${FT_TIMEOUT:-60} python3 -m ringcomm.bench -n $n -b 32K -e 32M -f 4 --op all_sum,all_gather 2>&1 | grep -v "^#  \|pass on\|^#$"
  done
  for gil in 0 1; do
    echo "== latency PYTHON_GIL=$gil"
    PYTHON_GIL=$gil PYTHONPATH=$F/site:$PWD timeout 60 $PY -m ringcomm.launch -n 2 docs/perf/16core/latency.py 2>&1 | tail -3
  done
  echo "elapsed $SECONDS s"
} > ${OUT:-/tmp}/ft.txt 2>&1
