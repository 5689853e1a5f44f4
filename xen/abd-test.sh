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

# The device model. On XCP-ng, tapdisk reads the VHD on the SR and qemu sees only its block
# device; here Debian's qemu opens the file itself, and its image locking takes a POSIX lock,
# which over NFSv3 is an NLM call. The A3 serves no NLM (lockd), and the kernel's NLM client
# retries forever, so qemu hung in fcntl (wchan rpc_wait_bit_killable under nlmclnt_proc)
# until libxl's fixed 60 s start timeout killed it. Like tapdisk, it takes no lock here.
cat >/tmp/qemu-dm <<'EOF'
#!/bin/sh
for arg; do
	shift
	case "$arg" in
	file=*,if=none,*) arg="$arg,file.locking=off" ;;
	esac
	set -- "$@" "$arg"
done
exec /usr/libexec/xen-qemu-system-i386 "$@"
EOF
chmod +x /tmp/qemu-dm

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
device_model_override = "/tmp/qemu-dm"
EOF
# Creates the ABD paused, writes its boot config as xapi's xenstore_data, and starts it.
start_abd() {
	xl -v create -p /tmp/abd.cfg >/tmp/xl-create.log 2>&1 || {
		cat /tmp/xl-create.log
		ls -l /var/log/xen
		cat /var/log/xen/qemu-dm-abd.log
		fail "xl create"
	}
	DOMID=$(xl domid abd)
	# xapi's xenstore_data: xenopsd makes vm-data the guest's own (xenopsd/xc/domain.ml,
	# rwperm), then writes the keys under it.
	VMDATA="/local/domain/$DOMID/vm-data"
	xenstore-write "$VMDATA" ""
	xenstore-chmod "$VMDATA" "n$DOMID"
	while IFS='=' read -r key value; do
		xenstore-write "$VMDATA/abd/$key" "$value" || fail "xenstore-write $key"
	done </abd-keys
	xl unpause abd
}
# The ABD's serial port (kernel messages) and its PV console (the agent's log), on dom0's.
for log in abd-serial.log guest-abd.log; do
	tail -F "/var/log/xen/$log" 2>/dev/null | while IFS= read -r line; do echo "abd| $line"; done &
done
start_abd
say "abd started: domid $DOMID"

# The host keeps the deadline; when the boot stalled (nested TCG), it asks for one more.
until xenstore-read "$VMDATA/abd/assigned-ip" >/dev/null 2>&1; do
	if [ -e "$SR/reboot-abd" ]; then
		rm -f "$SR/reboot-abd"
		xl destroy abd
		start_abd
		say "abd restarted: domid $DOMID"
	fi
	sleep 1
done
say "assigned-ip $(xenstore-read "$VMDATA/abd/assigned-ip")"

# Hot-plug the disk to back up, and the one to restore into, read-write as xapi must for
# HVM guests (DISK_VBD_MUST_BE_READWRITE_FOR_HVM).
# libxl gives the block hotplug script 40 s (LIBXL_HOTPLUG_TIMEOUT, fixed at build time);
# under nested TCG on this 2-core machine it took 36 s, and over 40 s once, so a timed-out
# attach is tried once more.
attach() {
	spec="format=raw,vdev=$1,access=rw,target=$SR/$2"
	xl block-attach abd "$spec" 2>/tmp/attach.log && return
	say "block-attach $2 failed once: $(grep -c 'because of timeout' /tmp/attach.log) timeout"
	xl -v block-attach abd "$spec" || {
		cat /tmp/attach.log /var/log/xen/xen-hotplug.log
		fail "block-attach $2"
	}
}
attach xvdb "$DATA_FILE"
attach xvdc "$RESTORE_FILE"
say "disks attached: $(xl block-list abd | tail -n +2 | awk '{print $1 "=" $5}' | tr '\n' ' ')"

wait_for test -f "$SR/detach"
xl block-detach abd xvdb || fail "block-detach xvdb"
xl block-detach abd xvdc || fail "block-detach xvdc"
xl destroy abd
umount "$SR"
say "detached"
