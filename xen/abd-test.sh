#!/bin/sh
# The real-Xen test's sequence in dom0 (tests/tests/abd_xen.rs appends it to the initramfs as
# /run-test.sh, with its settings in /test.env and the ABD's boot config in /abd-keys).
#
# The host drives the pace: it watches the "dom0: " lines on the console, enforces every
# deadline (dom0's clock under nested TCG is no measure of time), and signals back through
# files it creates in the SR directory, which dom0 sees over NFS.
set -u
. /test.env
say() { echo "dom0: $*"; }
fail() {
	say "FAIL $*"
	exit 1
}
# Waits (without a deadline: the host has it) until the command succeeds.
wait_for() {
	while ! "$@" >/dev/null 2>&1; do sleep 1; done
}

# XCP-ng's SM (xapi-project/sm libs/sm/nfs.py): probe the server, then a soft TCP mount with
# no attribute caching on directories.
OPTS=soft,proto=tcp,vers=3,acdirmin=0,acdirmax=0,timeo=200,retrans=4
# mount.nfs needs rpc.statd for NFSv3 locking, and statd registers with a local rpcbind.
rpcbind || fail "rpcbind"
rpc.statd || fail "rpc.statd"
rpcinfo -s "$NFS_SERVER" || {
	ip addr show xenbr0
	echo | nc -w 5 "$NFS_SERVER" 111 && echo "tcp 111 connects"
	rpcinfo -T tcp "$NFS_SERVER" 100000 2
	fail "rpcinfo -s $NFS_SERVER"
}
# SM's `showmount -e` probe is not run here: through qemu's NAT, rpcbind's GETADDR names the
# address the A3 is bound to (127.0.0.1), as Linux rpcbind would, and libtirpc's
# clnt_create then dials dom0's own loopback. `mount.nfs` takes only the port from that
# answer, so it works. tests/tests/sr_nfs_probes.rs runs showmount against the export
# with no NAT in between.
mkdir -p /run/sr-root "/run/sr-mount/$SR_UUID"
mount -t nfs -o "$OPTS" "$NFS_SERVER:$EXPORT" /run/sr-root || fail "mount $EXPORT"
mkdir -p "/run/sr-root/$SR_UUID" || fail "mkdir $SR_UUID"
umount /run/sr-root
SR="/run/sr-mount/$SR_UUID"
mount -t nfs -o "$OPTS" "$NFS_SERVER:$EXPORT/$SR_UUID" "$SR" || fail "mount $EXPORT/$SR_UUID"
# FileSR._check_writable and _check_hardlinks: a new file, then a hard link to it.
probe="$SR/$(cat /proc/sys/kernel/random/uuid)"
: >>"$probe" || fail "the SR is not writable"
ln "$probe" "$probe.new" || fail "the SR has no hard links"
[ "$(stat -c %h "$probe")" = 2 ] || fail "the hard link count is $(stat -c %h "$probe")"
rm -f "$probe" "$probe.new"
say "sr attached"

# The A3 writes the ABD's template disk into the SR now; this client must see it appear.
VHD="$SR/$VDI_UUID.vhd"
wait_for test -f "$VHD"
[ "$(head -c 8 "$VHD")" = conectix ] || fail "$VHD has no VHD footer copy"
[ "$(tail -c 512 "$VHD" | head -c 8)" = conectix ] || fail "$VHD has no VHD footer"
say "vhd read: $(stat -c %s "$VHD") bytes"

# The ABD as XCP-ng runs it: HVM, 128 MiB, its disk a VHD on the NFS SR. Under nested TCG
# SeaBIOS's IDE PIO takes minutes per MiB, so the disk sits on an AHCI controller (DMA).
cat >/tmp/abd.cfg <<EOF
name = "abd"
type = "hvm"
memory = 128
vcpus = 1
disk = [ "format=vhd,vdev=xvda,access=rw,target=$VHD" ]
hdtype = "ahci"
vif = [ "bridge=xenbr0,type=vif" ]
vga = "none"
vnc = 0
serial = "file:/var/log/xen/abd-serial.log"
on_crash = "preserve"
EOF
# libxl gives the device model 60 s to start (LIBXL_DEVICE_MODEL_START_TIMEOUT); qemu-xen
# under nested TCG takes longer.
export LIBXL_DEVICE_MODEL_START_TIMEOUT=900
mkdir -p /var/log/xen
xl create -p /tmp/abd.cfg >/tmp/xl-create.log 2>&1 || {
	cat /tmp/xl-create.log
	ls -l /var/log/xen
	cat /var/log/xen/qemu-dm-abd.log
	fail "xl create"
}
DOMID=$(xl domid abd)
# xapi's xenstore_data: xenopsd makes vm-data the guest's own (xenopsd/xc/domain.ml, rwperm),
# then writes the keys under it.
VMDATA="/local/domain/$DOMID/vm-data"
xenstore-write "$VMDATA" ""
xenstore-chmod "$VMDATA" "n$DOMID"
while IFS='=' read -r key value; do
	xenstore-write "$VMDATA/abd/$key" "$value" || fail "xenstore-write $key"
done </abd-keys
tail -f /var/log/xen/abd-serial.log | sed -u 's/^/abd| /' &
xl unpause abd
say "abd started: domid $DOMID"

wait_for xenstore-read "$VMDATA/abd/assigned-ip"
say "assigned-ip $(xenstore-read "$VMDATA/abd/assigned-ip")"

# Hot-plug the disk to back up, and the one to restore into, read-write as xapi must for
# HVM guests (DISK_VBD_MUST_BE_READWRITE_FOR_HVM).
xl block-attach abd "format=raw,vdev=xvdb,access=rw,target=$SR/$DATA_FILE" ||
	fail "block-attach $DATA_FILE"
xl block-attach abd "format=raw,vdev=xvdc,access=rw,target=$SR/$RESTORE_FILE" ||
	fail "block-attach $RESTORE_FILE"
say "disks attached: $(xl block-list abd | tail -n +2 | awk '{print $1 "=" $5}' | tr '\n' ' ')"

wait_for test -f "$SR/detach"
xl block-detach abd xvdb || fail "block-detach xvdb"
xl block-detach abd xvdc || fail "block-detach xvdc"
xl destroy abd
umount "$SR"
say "detached"
