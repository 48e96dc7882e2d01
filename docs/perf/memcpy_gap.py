"""memcpy's slow case (ringcomm/memcopy.py): microseconds to copy 16 KiB-8 MiB with the
destination g bytes after the source (mod 4 KiB), by np.copyto (memcpy) and by the identity
ufunc that memcopy.copy uses (python3 docs/perf/memcpy_gap.py; median of 15, warm caches).  First, what an all_gather's
own-block copy meets: x (256 KiB) and out (512 KiB) allocated in turn, in a fresh process and
again once a 4 MiB array was freed, as ringcomm's set-up frees its warm-up buffers."""
import platform
import time

import numpy as np

PAGE = 4096
GAPS = (0, 1, 16, 31, 32, 64, 2048)


def micros(copy, dst, src) -> float:
    times = []
    for _ in range(15):
        start = time.perf_counter()
        copy(dst, src)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e6


def ufunc(dst, src) -> None:
    np.positive(src, out=dst)


def address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def main() -> None:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    print(f"# {cpu}; glibc {platform.libc_ver()[1]}; numpy {np.__version__}")
    for when in ("fresh process", "after a 4 MiB array was freed"):
        if when != "fresh process":
            big = np.empty(4 << 20, np.uint8)
            del big
        x, out = np.ones(64 << 10, np.float32), np.empty(128 << 10, np.float32)
        own = out[:x.size]
        print(f"# {when}: x and out {(address(out) - address(x)) % PAGE} bytes apart (mod "
              f"{PAGE}); copy of x into out: memcpy {micros(np.copyto, own, x):.1f} us")
    print("# size_KiB gap_bytes memcpy_us ufunc_us")
    for size in (16 << 10, 128 << 10, 256 << 10, 512 << 10, 2 << 20, 8 << 20):
        src = np.full(size, 7, np.uint8)
        room = np.empty(size + 2 * PAGE, np.uint8)
        for gap in GAPS:
            at = (address(src) - address(room) + gap) % PAGE
            dst = room[at:at + size]
            print(f"{size >> 10:8d} {gap:9d} {micros(np.copyto, dst, src):9.1f} "
                  f"{micros(ufunc, dst, src):8.1f}", flush=True)


if __name__ == "__main__":
    main()
