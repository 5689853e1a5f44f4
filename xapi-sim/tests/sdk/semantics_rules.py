#!/usr/bin/env python3
"""The rules real xapi enforces and xapi-sim follows, each seen through the XenAPI SDK.

Usage: semantics_rules.py MASTER_URL USER PASSWORD
Run by `cargo test -p xapi-sim --test sdk_conformance`. Each check would fail against a
simulator that accepts what xapi refuses; the comment above it names the xapi source.
"""

import base64
import json
import ssl
import sys
import time
import urllib.request

try:
    import XenAPI
except ImportError:
    print("the XenAPI SDK is missing: run `cargo xtask test` or `pip install XenAPI`")
    sys.exit(2)

MASTER, USER, PASSWORD = sys.argv[1:4]


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}")
        sys.exit(1)


def ok(what):
    print(f"ok   {what}")


def failure_of(fn, *args):
    try:
        fn(*args)
    except XenAPI.Failure as f:
        return f.details
    return None


def control(path, method="POST"):
    """The simulator's /sim/ control API (simulated-only knobs)."""
    req = urllib.request.Request(MASTER.rstrip("/") + path, data=b"", method=method)
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    req.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(req, context=ssl._create_unverified_context()) as resp:
        return json.loads(resp.read())


def wait_task(task):
    deadline = time.time() + 30
    while x.task.get_status(task) == "pending" and time.time() < deadline:
        time.sleep(0.05)
    return x.task.get_record(task)


s = XenAPI.Session(MASTER, ignore_ssl=True)
s.xenapi.login_with_password(USER, PASSWORD, "1.0", "semantics-rules")
x = s.xenapi

vms = x.VM.get_all_records()
running = [r for r, v in vms.items()
           if v["power_state"] == "Running" and not v["is_control_domain"]]
check(len(running) >= 2, "at least two running demo VMs")
source, helper = running[0], running[1]
check(x.VM.get_domain_type(helper) == "hvm", "demo VMs are HVM, as XCP-ng guests are")
# The helper's own (host-local) SR: a VM attaches only disks its host sees.
sr = x.VDI.get_SR(next(x.VBD.get_VDI(b) for b in x.VM.get_VBDs(helper)
                       if x.VBD.get_type(b) == "Disk"))


def new_vdi(name):
    return x.VDI.create({"SR": sr, "virtual_size": str(4 << 20), "type": "user", "name_label": name,
                         "sharable": False, "read_only": False, "other_config": {}})


def new_vbd(vm, vdi, mode):
    return x.VBD.create({"VM": vm, "VDI": vdi, "userdevice": "autodetect", "bootable": False,
                         "mode": mode, "type": "Disk", "unpluggable": True, "empty": False,
                         "other_config": {}, "qos_algorithm_type": "", "qos_algorithm_params": {}})


# --- xapi_vbd.ml `plug`, CA-83260: no read-only disk in an HVM guest ---------------------
disk = new_vdi("rules-ro")
ro = new_vbd(helper, disk, "RO")
details = failure_of(x.VBD.plug, ro)
check(details == ["DISK_VBD_MUST_BE_READWRITE_FOR_HVM", ro],
      f"an RO disk VBD into an HVM guest gives DISK_VBD_MUST_BE_READWRITE_FOR_HVM [vbd], got {details}")
x.VBD.destroy(ro)
rw = new_vbd(helper, disk, "RW")
x.VBD.plug(rw)
check(x.VBD.get_currently_attached(rw), "the same disk plugs read-write")
ok("VBD.plug: an RO disk into an HVM guest is refused, RW works")

# --- xapi_vbd_helpers.ml sharing check: VDI_IN_USE [vdi] on plug --------------------------
second = new_vbd(source, disk, "RW")
details = failure_of(x.VBD.plug, second)
check(details == ["VDI_IN_USE", disk], f"a second writer gives VDI_IN_USE [vdi], got {details}")
x.VBD.destroy(second)
ok("VBD.plug of a disk another VM writes gives VDI_IN_USE [vdi]")

# --- xapi_vbd_helpers.ml + xapi_pv_driver_version.ml: hot-plug needs PV drivers ----------
control(f"/sim/vms/{helper}/guest-tools?present=false")
check(x.VM.get_guest_metrics(helper) == "OpaqueRef:NULL", "a guest without tools has no guest metrics")
details = failure_of(x.VBD.unplug, rw)
check(details == ["VM_MISSING_PV_DRIVERS", helper],
      f"VBD.unplug from an HVM guest without PV drivers gives VM_MISSING_PV_DRIVERS [vm], got {details}")
check(x.VBD.get_currently_attached(rw), "the refused unplug left the disk attached")
control(f"/sim/vms/{helper}/guest-tools?present=true")
check(x.VM_guest_metrics.get_can_use_hotplug_vbd(x.VM.get_guest_metrics(helper)) == "yes",
      "guest tools back: can_use_hotplug_vbd = yes")
x.VBD.unplug(rw)
control(f"/sim/vms/{helper}/guest-tools?present=false")
details = failure_of(x.VBD.plug, rw)
check(details == ["VM_MISSING_PV_DRIVERS", helper],
      f"VBD.plug into an HVM guest without PV drivers gives VM_MISSING_PV_DRIVERS [vm], got {details}")
control(f"/sim/vms/{helper}/guest-tools?present=true")
x.VBD.destroy(rw)
ok("VBD.plug/unplug into an HVM guest without PV drivers gives VM_MISSING_PV_DRIVERS")

# --- xapi_vbd.ml `create`: a read-write VBD of a read-only VDI --------------------------
x.VDI.set_read_only(disk, True)
details = failure_of(new_vbd, helper, disk, "RW")
check(details == ["VDI_READONLY", disk], f"an RW VBD of a read-only VDI gives VDI_READONLY [vdi], got {details}")
x.VDI.set_read_only(disk, False)
x.VDI.destroy(disk)
ok("VBD.create: an RW VBD of a read-only VDI gives VDI_READONLY")

# --- sm: snapshots are read-write VDIs, so an HVM backup appliance can take them --------
base_disk = next(x.VBD.get_VDI(b) for b in x.VM.get_VBDs(source)
                 if x.VBD.get_type(b) == "Disk" and x.VBD.get_userdevice(b) == "0")
x.VDI.enable_cbt(base_disk)
snap_vm = x.VM.snapshot(source, "rules-snapshot")
snap_vdis = [x.VBD.get_VDI(b) for b in x.VM.get_VBDs(snap_vm)
             if x.VBD.get_type(b) == "Disk" and not x.VBD.get_empty(b)]
check(all(not x.VDI.get_read_only(v) for v in snap_vdis), "snapshot VDIs are not read_only")
snap = next(v for v in snap_vdis if x.VDI.get_snapshot_of(v) == base_disk)
ok("snapshot VDIs are read-write (read_only = false)")

# --- xapi_vdi.ml `_data_destroy`: waits ~4 s for the VDI's VBDs, then VDI_IN_USE ---------
started = time.time()
details = failure_of(x.VDI.data_destroy, snap)
waited = time.time() - started
check(details == ["VDI_IN_USE", snap, "data_destroy"],
      f"data_destroy while the snapshot VM's VBD exists gives VDI_IN_USE [vdi, data_destroy], got {details}")
check(waited >= 3.5, f"data_destroy waited for the VBDs to go (about 4 s), waited {waited:.1f} s")
check(x.VDI.get_type(snap) == "user", "the refused data_destroy left the VDI as it was")
task = x.Async.VDI.data_destroy(snap)
check(x.task.get_status(task) == "pending", "Async.VDI.data_destroy's task is pending while it waits")
# The VBDs go while data_destroy waits: it then succeeds, as with VM.destroy first.
x.VM.destroy(snap_vm)
rec = wait_task(task)
check(rec["status"] == "success", f"data_destroy succeeds once the snapshot VM is gone: {rec}")
check(x.VDI.get_type(snap) == "cbt_metadata", "data_destroy left a cbt_metadata VDI")
for v in snap_vdis:
    x.VDI.destroy(v)
ok("VDI.data_destroy waits for the VDI's VBDs: VDI_IN_USE while they stay, success once they go")

# --- sm (SR_BACKEND_FAILURE_460): list_changed_blocks of unrelated VDIs -----------------
other = next(x.VBD.get_VDI(b) for b in x.VM.get_VBDs(helper)
             if x.VBD.get_type(b) == "Disk" and x.VBD.get_userdevice(b) == "0")
x.VDI.enable_cbt(other)
a = x.VDI.snapshot(base_disk)
b = x.VDI.snapshot(other)
details = failure_of(x.VDI.list_changed_blocks, a, b)
check(details is not None and details[0] == "SR_BACKEND_FAILURE_460" and len(details) == 4
      and details[1] == "" and details[3] == "" and "unrelated" in details[2],
      f"unrelated VDIs give SR_BACKEND_FAILURE_460 ['', msg, ''], got {details}")
for v in (a, b):
    x.VDI.destroy(v)
x.VDI.disable_cbt(other)
x.VDI.disable_cbt(base_disk)
ok("VDI.list_changed_blocks of unrelated VDIs gives SR_BACKEND_FAILURE_460 ['', msg, '']")

# --- xapi_xenops.ml `vbd_unplug`: a guest holding the device rejects a clean unplug ---------
disk = new_vdi("rules-held")
vbd = new_vbd(helper, disk, "RW")
x.VBD.plug(vbd)
control(f"/sim/vbds/{vbd}/held?held=true")
details = failure_of(x.VBD.unplug, vbd)
check(details == ["DEVICE_DETACH_REJECTED", "VBD", vbd, ""],
      f"VBD.unplug of a held device gives DEVICE_DETACH_REJECTED [VBD, vbd, ''], got {details}")
check(x.VBD.get_currently_attached(vbd), "the rejected unplug left the disk attached")
x.VBD.unplug_force(vbd)
check(not x.VBD.get_currently_attached(vbd), "VBD.unplug_force detaches a held device")
x.VBD.destroy(vbd)
ok("VBD.unplug of a held device is rejected; unplug_force works")

# --- xapi_vdi.ml `check_operation_error`: enable_cbt needs the SR's CBT and on_boot=persist ---
host = x.host.get_all()[0]
dummy = x.SR.create(host, {}, "0", "rules-dummy", "", "dummy", "user", False, {})
x.VDI.set_on_boot(disk, "reset")
details = failure_of(x.VDI.enable_cbt, disk)
check(details == ["VDI_ON_BOOT_MODE_INCOMPATIBLE_WITH_OPERATION"],
      f"enable_cbt of an on_boot=reset VDI gives VDI_ON_BOOT_MODE_INCOMPATIBLE_WITH_OPERATION, got {details}")
x.VDI.set_on_boot(disk, "persist")
moved = x.VDI.copy(disk, dummy)
details = failure_of(x.VDI.enable_cbt, moved)
check(details == ["SR_OPERATION_NOT_SUPPORTED", dummy],
      f"enable_cbt on an SR without CBT gives SR_OPERATION_NOT_SUPPORTED [sr], got {details}")
for v in (moved, disk):
    x.VDI.destroy(v)
ok("VDI.enable_cbt is refused on an SR type without CBT and on an on_boot=reset VDI")

# --- xapi_vm_lifecycle.ml + xapi_vm.ml `set_memory_limits`: Halted only, limits in order ---
mib = 1 << 20
details = failure_of(x.VM.set_memory_limits, helper, str(64 * mib), str(256 * mib),
                     str(128 * mib), str(128 * mib))
check(details == ["VM_BAD_POWER_STATE", helper, "halted", "running"],
      f"set_memory_limits of a running VM gives VM_BAD_POWER_STATE [vm, halted, running], got {details}")
clone = x.VM.clone(next(r for r, v in vms.items() if v["is_a_template"] and not v["is_a_snapshot"]
                        and not v["is_control_domain"]), "rules-memory")
details = failure_of(x.VM.set_memory_limits, clone, str(64 * mib), str(128 * mib),
                     str(256 * mib), str(256 * mib))
check(details == ["MEMORY_CONSTRAINT_VIOLATION_ORDER"],
      f"dynamic above static_max gives MEMORY_CONSTRAINT_VIOLATION_ORDER, got {details}")
x.VM.set_memory_limits(clone, str(64 * mib), str(256 * mib), str(128 * mib), str(192 * mib))
rec = x.VM.get_record(clone)
check((rec["memory_static_min"], rec["memory_static_max"], rec["memory_dynamic_min"],
       rec["memory_dynamic_max"], rec["memory_target"])
      == (str(64 * mib), str(256 * mib), str(128 * mib), str(192 * mib), str(128 * mib)),
      f"the limits are set, the target at dynamic_min: {rec}")
x.VM.destroy(clone)
ok("VM.set_memory_limits: Halted VMs only, limits in order, target at dynamic_min")

# --- simulated-only latency knob: Async tasks stay pending while a slow pool works ---------
control("/sim/latency?ms=1500&method=VM.get_allowed_VBD_devices")
started = time.time()
x.VM.get_allowed_VBD_devices(helper)
check(time.time() - started >= 1.4, "a slow sync call answers after the latency")
task = x.Async.VM.get_allowed_VBD_devices(helper)
check(x.task.get_status(task) == "pending", "a slow Async call's task is pending at first")
check(wait_task(task)["status"] == "success", "the slow task then succeeds")
control("/sim/latency?ms=0")
ok("the latency knob makes calls slow and tasks pending")

print("all semantics rules hold")
