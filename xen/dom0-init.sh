#!/bin/busybox sh
# /init of the real-Xen test's dom0 (`cargo xtask test-xen` builds the initramfs; DESIGN §7).
# It starts what a Xen host runs (xenstored, xenconsoled), bridges qemu's user network for
# guests, then runs /run-test.sh, which the test appends to the initramfs with its settings
# in /test.env. Progress lines start with "dom0: "; the machine powers off at the end.
/bin/busybox --install -s /bin
export PATH=/usr/lib/xen-4.17/bin:/usr/sbin:/usr/bin:/sbin:/bin
export LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu
say() { echo "dom0: $*"; }
fail() {
	say "FAIL $*"
	poweroff -f
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
# The block hotplug script hangs without these (DESIGN §7).
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
ln -sf /run /var/run
mkdir -p /run/xen /run/xenstored /var/lock /run/lock /var/lib/xen /var/log/xen

started=$(cut -d' ' -f1 /proc/uptime)
while read -r m; do
	insmod "/lib/modules/$m" || fail "insmod $m"
done </etc/dom0-modules.load
say "modules loaded in $(awk "BEGIN{print $(cut -d' ' -f1 /proc/uptime) - $started}") s"

mount -t xenfs xenfs /proc/xen || fail "mount xenfs"
xenstored --pid-file=/run/xenstored.pid || fail "xenstored"
xen-init-dom0 || fail "xen-init-dom0"
xenconsoled --pid-file=/run/xenconsoled.pid --log=guest --log-dir=/var/log/xen ||
	fail "xenconsoled"

# Guests' vifs join xenbr0 with the NIC on qemu's user network (10.0.2.0/24, the host at
# 10.0.2.2); qemu's DHCP hands guests 10.0.2.15 onwards, so dom0 takes a fixed .10.
ip link set lo up
ip link add name xenbr0 type bridge stp_state 0 forward_delay 0 || fail "bridge"
ip link set eth0 master xenbr0 || fail "eth0 into xenbr0"
ip link set eth0 up
ip link set xenbr0 up
ip addr add 10.0.2.10/24 dev xenbr0
ip route add default via 10.0.2.2

say "up: $(xl info | grep -E '^(xen_version|virt_caps|free_memory)' | tr -s ' ' | tr '\n' ' ')"
if [ -x /run-test.sh ]; then
	/run-test.sh && say "test done" || say "FAIL test exited $?"
fi
sync
poweroff -f
