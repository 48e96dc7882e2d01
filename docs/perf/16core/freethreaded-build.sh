# A free-threaded CPython (3.13, built --disable-gil) for the device machine, which has no
# network (issue 17: "where free-threaded CPython is installable, measure it too").  Run here,
# from the repository root, on this project's 2-core Debian 12 machine (gcc, and the -dev
# packages of zlib, libffi, bzip2, lzma and openssl):
#   bash docs/perf/16core/freethreaded-build.sh
# It builds from Debian's source tarball of CPython 3.13.5 (PyPI has no free-threaded
# interpreter and nothing else is reachable here) and leaves in .ft/ (ignored: add /.ft/ to
# .git/info/exclude) the installed interpreter without its tests, IDLE, Tk and headers
# (py313t.tar.xz, 16 MB) and PyPI's cp313t wheels of numpy and ml_dtypes.  The binary needs
# glibc 2.35 at most (checked below), the device machine's.  freethreaded.sh runs it there.
set -eu
out=$(realpath -m "${FT_OUT:-.ft}") work=${FT_WORK:-/tmp/ft-build} version=3.13.5
mkdir -p "$work" "$out"
cd "$work"
[ -f "python3.13_$version.orig.tar.xz" ] || \
  curl -sfO "http://deb.debian.org/debian/pool/main/p/python3.13/python3.13_$version.orig.tar.xz"
rm -rf "Python-$version" prefix slim
tar xf "python3.13_$version.orig.tar.xz"
(cd "Python-$version" && ./configure --disable-gil --prefix="$work/prefix" --without-ensurepip \
   --disable-test-modules > ../configure.log && make -j"$(nproc)" > ../make.log 2>&1 &&
 make install > ../install.log 2>&1)
newest=$(objdump -T prefix/bin/python3.13t prefix/lib/python3.13t/lib-dynload/*.so |
         grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)
echo "built: $(prefix/bin/python3.13t -VV); needs $newest"
cp -a prefix slim
(cd slim && rm -rf lib/python3.13t/site-packages/* lib/python3.13t/{test,idlelib,tkinter} \
   lib/python3.13t/{ensurepip,turtledemo} share include &&
 find . -name __pycache__ -prune -exec rm -rf {} + && find . -name '*.a' -delete)
tar cJf "$out/py313t.tar.xz" -C slim .
pip download -q --no-deps --only-binary=:all: --python-version 3.13 --abi cp313t \
  --implementation cp --platform manylinux_2_17_x86_64 -d "$out" numpy==2.2.6 ml_dtypes==0.5.1
ls -la "$out"
