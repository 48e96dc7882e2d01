#!/bin/bash
# Run a command inside a QEMU guest that has Soft-RoCE (rdma_rxe) devices; print what it
# prints, exit with its status.   usage: run.sh [COMMAND...]   (default: ibv_devices)
# ringcomm's copy of the recipe in the workplace's shared/rxe/ (a clone of ringcomm has no
# shared/, and its tests must boot the guest on their own): the same steps, plus RXE_JOB
# (the job folder, which the guest sees as /run/job: the place for results), sch_netem
# loaded in the guest for loss tests, and 4 ranks' mesh by default.
#   e.g.  run.sh 'ibv_devices; rdma link show'    run.sh ./some-test.sh    run.sh bash -c '...'
# The guest boots Debian's own kernel (linux-image-amd64, unpacked here, not installed) with
# this machine's / as its root (9p, read-only, under a tmpfs overlay): whatever is installed
# here (pyverbs, a venv, a checkout) is there at the same path. The command runs as root in the
# current directory, with rdma_rxe loaded, device rxe0 (for ranks sharing one device) and a
# mesh of devices for RXE_RANKS ranks with ringcomm's device file /run/rxe/mesh.json
# (topology.sh). The guest has no network beyond the veths it makes.
# Settings: RXE_WORK (cache, default ~/.cache/rxe-vm), RXE_ACCEL (kvm or tcg; default kvm only
# where kvm_intel/kvm_amd is loaded), RXE_CPUS (default nproc), RXE_MEM (default 4G),
# RXE_RANKS (default 4), RXE_TIMEOUT (seconds, default 900), RXE_JOB (default: a new
# folder under RXE_WORK).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=${RXE_WORK:-$HOME/.cache/rxe-vm}
mkdir -p "$work"

# 1. Packages, once: QEMU, busybox and kmod for the initramfs, rdma-core's user space.
pkgs="qemu-system-x86 busybox-static kmod cpio xz-utils iproute2 ibverbs-utils
      ibverbs-providers python3-pyverbs"
if ! dpkg -s $pkgs > /dev/null 2>&1; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends $pkgs
fi

# 2. The kernel linux-image-amd64 depends on, unpacked (not installed), its modules indexed,
#    and its uncompressed vmlinux: QEMU boots that through its PVH entry, which spares the
#    XZ decompression (seconds under emulation). (The cloud kernel lacks rdma_rxe and 9p.)
kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
kver=${kpkg#linux-image-} kdir=$work/$kver
if [ ! -s "$kdir/vmlinux" ]; then
    (cd "$work" && apt-get download -q "$kpkg")
    dpkg-deb -x "$work/${kpkg}"_*.deb "$kdir"
    depmod -b "$kdir" "$kver"
    python3 -c 'import sys; d = open(sys.argv[1], "rb").read()
sys.stdout.buffer.write(d[d.find(b"\xfd7zXZ\0"):])' "$kdir/boot/vmlinuz-$kver" |
        xz -dc --single-stream > "$kdir/vmlinux.tmp" && mv "$kdir/vmlinux.tmp" "$kdir/vmlinux"
fi

# 3. The initramfs: busybox, the modules that mount a virtio-9p root under overlayfs, /init.
if [ ! -s "$kdir/initrd.gz" ]; then
    t=$(mktemp -d) && mkdir -p "$t/bin" "$t/modules"
    cp /bin/busybox "$t/bin/" && cp "$here/initramfs-init" "$t/init" && chmod +x "$t/init"
    for m in $(for m in virtio_pci 9pnet_virtio 9p overlay; do
                   modprobe -d "$kdir" -S "$kver" --show-depends $m; done |
               awk '!seen[$2]++ {print $2}'); do
        cp "$m" "$t/modules/" && basename "$m" >> "$t/modules.order"
    done
    (cd "$t" && find . | cpio -o -H newc --quiet | gzip -1) > "$kdir/initrd.gz"
    rm -rf "$t"
fi

# 4. The job: the command and directory in, its output and status out (9p share "job").
job=${RXE_JOB:-$(mktemp -d "$work/job.XXXXXX")}
mkdir -p "$job" && rm -f "$job/rc" "$job/out"
echo "${*:-ibv_devices}" > "$job/cmd" && pwd > "$job/cwd"

# 5. Boot. KVM only where it runs a stock kernel: /dev/kvm of a PVM host (kvm_pvm, as on
#    Firecracker machines with nested_pvm) crawls through the boot, so TCG, one host thread
#    per vCPU, there.
accel=${RXE_ACCEL:-$([ -e /sys/module/kvm_intel ] || [ -e /sys/module/kvm_amd ] && echo kvm || echo tcg)}
if [ "$accel" = kvm ]; then cpu=host; else cpu=max accel=tcg,thread=multi,tb-size=512; fi
append="console=ttyS0 quiet panic=-1 RXE_KVER=$kver RXE_MODULES=$kdir/lib/modules/$kver"
append+=" RXE_GUEST=$here/guest.sh RXE_RANKS=${RXE_RANKS:-4}"
start=$(date +%s%N)
timeout "${RXE_TIMEOUT:-900}" qemu-system-x86_64 -machine pc -accel "$accel" -cpu "$cpu" \
    -smp "${RXE_CPUS:-$(nproc)}" -m "${RXE_MEM:-4G}" -nodefaults -no-user-config \
    -display none -no-reboot -monitor none -serial stdio \
    -kernel "$kdir/vmlinux" -initrd "$kdir/initrd.gz" -append "$append" \
    -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
    -virtfs "local,path=$job,mount_tag=job,security_model=none" < /dev/null | sed -u 's/\r$//' || true
echo "run.sh: $accel VM ran $(( ($(date +%s%N) - start) / 1000000 )) ms; output in $job" >&2
exit "$(cat "$job/rc" 2> /dev/null || echo 125)"
