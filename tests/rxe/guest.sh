#!/bin/sh
# PID 1 of the guest that run.sh boots: mounts, Soft-RoCE devices, then the job's command (9p
# share "job": files cmd and cwd in; out, rc and dmesg back), then power off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mkdir -p /run/job
mount -t 9p -o trans=virtio,version=9p2000.L job /run/job
echo "guest: up $(cut -d' ' -f1 /proc/uptime) s after boot" > /dev/console
ip link set lo up
sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
modprobe rdma_rxe && modprobe veth && modprobe sch_netem
. "$(dirname "$0")/topology.sh"
rxe_single rxe0
rxe_mesh "${RXE_RANKS:-4}"
echo "guest: $(ls /sys/class/infiniband | wc -l) rxe devices at $(cut -d' ' -f1 /proc/uptime) s" > /dev/console
cd "$(cat /run/job/cwd)"
( sh -c "$(cat /run/job/cmd)"; echo $? > /run/job/rc ) 2>&1 | tee /run/job/out > /dev/console
dmesg > /run/job/dmesg
sync
exec /bin/busybox poweroff -f
