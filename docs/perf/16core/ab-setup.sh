# Sourced by the publish scripts of this folder (on the device machine, from the repository
# root): MLX from .whl/ into /tmp/site, results under $R (/tmp/res) packed into $OUT/all.tgz by
# `pack`, and the trees of an A/B: base ($BASE), prev ($PREV, optional), new (this tree) and
# var ($VAR, optional).
set -u
: "${OUT:?OUT must name the folder the results go to}" "${BASE:?BASE must name a checkout}"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONUNBUFFERED=1
here=$PWD R=/tmp/res SECONDS=0
mkdir -p $R
pack() { tar czf "$OUT/all.tgz" -C $R . ; }
trees="base${PREV:+ prev} new${VAR:+ var}"
root_of() { case $1 in base) echo "$BASE" ;; prev) echo "$PREV" ;; var) echo "$VAR" ;; *) echo "$here" ;; esac; }
