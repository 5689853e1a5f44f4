#!/usr/bin/env python3
"""Conformance of xapi-sim with the official XenAPI Python SDK.

Usage: conformance.py SUPPORTER_URL MASTER_URL USER PASSWORD

Each check prints one line; the first failure ends the run with exit status 1.
Run by `cargo test -p xapi-sim --test sdk_conformance`.
"""

import base64
import ssl
import sys
import time
import urllib.parse
import urllib.request
import xmlrpc.client

try:
    import XenAPI
except ImportError:
    print("the XenAPI SDK is missing: run `cargo xtask test` or `pip install XenAPI`")
    sys.exit(2)

SUPPORTER, MASTER, USER, PASSWORD = sys.argv[1:5]
MASTER_ADDRESS = urllib.parse.urlparse(MASTER).hostname
BLOCK = 64 * 1024


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


def is_int_string(v):
    return isinstance(v, str) and v.lstrip("-").isdigit()


def control(method, path, body=None):
    """Calls the simulator's /sim/ control API on the master."""
    req = urllib.request.Request(MASTER.rstrip("/") + path, data=body, method=method)
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    req.add_header("Authorization", f"Basic {token}")
    ctx = ssl._create_unverified_context()
    with urllib.request.urlopen(req, context=ctx) as resp:
        return resp.read()


# --- login -----------------------------------------------------------------------------
sup = XenAPI.Session(SUPPORTER, ignore_ssl=True)
details = failure_of(sup.xenapi.login_with_password, USER, PASSWORD, "1.0", "conformance")
check(details == ["HOST_IS_SLAVE", MASTER_ADDRESS], f"login via supporter gives HOST_IS_SLAVE [{MASTER_ADDRESS}], got {details}")
ok("login through a supporter fails with HOST_IS_SLAVE and the master's address")

s = XenAPI.Session(MASTER, ignore_ssl=True)
s.xenapi.login_with_password(USER, PASSWORD, "1.0", "conformance")
x = s.xenapi
ok("login to the master")

details = failure_of(XenAPI.Session(MASTER, ignore_ssl=True).xenapi.login_with_password, USER, "wrong")
check(details is not None and details[0] == "SESSION_AUTHENTICATION_FAILED" and len(details) == 3,
      f"wrong password gives SESSION_AUTHENTICATION_FAILED [user, msg], got {details}")
ok("wrong password gives SESSION_AUTHENTICATION_FAILED")

# --- records and their types -----------------------------------------------------------
TYPES = {
    "pool": {"name_label": str, "master": str, "default_SR": str, "other_config": dict,
             "ha_enabled": bool, "ha_host_failures_to_tolerate": int},
    "host": {"address": str, "hostname": str, "name_label": str, "enabled": bool, "PIFs": list,
             "API_version_major": int, "API_version_minor": int, "software_version": dict,
             "resident_VMs": list, "memory_overhead": int, "metrics": str},
    "VM": {"uuid": str, "name_label": str, "power_state": str, "is_a_template": bool,
           "is_a_snapshot": bool, "snapshot_of": str, "snapshots": list, "VBDs": list, "VIFs": list,
           "memory_static_max": int, "memory_dynamic_max": int, "memory_dynamic_min": int,
           "VCPUs_max": int, "VCPUs_at_startup": int, "platform": dict, "HVM_boot_params": dict,
           "other_config": dict, "xenstore_data": dict, "resident_on": str,
           "is_control_domain": bool, "domid": int, "HVM_shadow_multiplier": float,
           "snapshot_time": xmlrpc.client.DateTime},
    "SR": {"type": str, "content_type": str, "shared": bool, "PBDs": list, "VDIs": list,
           "physical_size": int, "physical_utilisation": int, "virtual_allocation": int},
    "VDI": {"virtual_size": int, "physical_utilisation": int, "type": str, "cbt_enabled": bool,
            "SR": str, "VBDs": list, "read_only": bool, "sharable": bool, "is_a_snapshot": bool,
            "snapshot_of": str, "snapshot_time": xmlrpc.client.DateTime, "sm_config": dict},
    "VBD": {"VM": str, "VDI": str, "device": str, "userdevice": str, "mode": str, "type": str,
            "bootable": bool, "currently_attached": bool, "empty": bool, "status_code": int},
    "network": {"bridge": str, "PIFs": list, "VIFs": list, "name_label": str, "MTU": int},
    "PIF": {"device": str, "IP": str, "netmask": str, "management": bool, "host": str,
            "network": str, "VLAN": int, "MTU": int},
}
records = {}
for cls, fields in TYPES.items():
    recs = getattr(x, cls).get_all_records()
    check(isinstance(recs, dict) and recs, f"{cls}.get_all_records returns a non-empty map")
    for ref, rec in recs.items():
        check(ref.startswith("OpaqueRef:"), f"{cls} ref {ref} is an OpaqueRef")
        for field, ty in fields.items():
            check(field in rec, f"{cls}.{field} present")
            v = rec[field]
            if ty is int:
                check(is_int_string(v), f"{cls}.{field} is an int sent as a string, got {v!r}")
            else:
                check(isinstance(v, ty), f"{cls}.{field} is {ty.__name__}, got {type(v).__name__} {v!r}")
    records[cls] = recs
    ok(f"{cls}.get_all_records: {len(recs)} records, fields correctly typed")

vms = records["VM"]
check(any(r["is_control_domain"] for r in vms.values()), "control domains are listed")
check(any(r["is_a_template"] for r in vms.values()), "templates are listed")
pool = next(iter(records["pool"].values()))
master_host = records["host"][pool["master"]]
check(master_host["address"] == MASTER_ADDRESS, "pool.master is the host we talk to")
ok("pool, master, templates and control domains are consistent")

# --- error shapes ----------------------------------------------------------------------
details = failure_of(x.VM.get_record, "OpaqueRef:nonexistent")
check(details == ["HANDLE_INVALID", "VM", "OpaqueRef:nonexistent"], f"HANDLE_INVALID [class, ref], got {details}")
ok("HANDLE_INVALID shape")

# The SDK logs in again on SESSION_INVALID, so check the raw response.
raw = xmlrpc.client.ServerProxy(MASTER, context=ssl._create_unverified_context())
reply = raw.VM.get_all("OpaqueRef:bogus-session")
check(reply == {"Status": "Failure", "ErrorDescription": ["SESSION_INVALID", "OpaqueRef:bogus-session"]},
      f"SESSION_INVALID [ref] in a Failure struct, got {reply}")
reply = raw.VM.get_all()
check(reply["Status"] == "Failure" and reply["ErrorDescription"] == ["MESSAGE_PARAMETER_COUNT_MISMATCH", "VM.get_all", "1", "0"],
      f"MESSAGE_PARAMETER_COUNT_MISMATCH, got {reply}")
reply = raw.VM.no_such_call(s._session)
check(reply["ErrorDescription"] == ["MESSAGE_METHOD_UNKNOWN", "VM.no_such_call"], f"MESSAGE_METHOD_UNKNOWN, got {reply}")
ok("SESSION_INVALID, MESSAGE_PARAMETER_COUNT_MISMATCH and MESSAGE_METHOD_UNKNOWN shapes")

halted = next(r for r, v in vms.items() if v["power_state"] == "Halted" and not v["is_a_template"]
              and not v["is_control_domain"] and not v["is_a_snapshot"])
details = failure_of(x.VM.clean_shutdown, halted)
check(details == ["VM_BAD_POWER_STATE", halted, "running", "halted"], f"VM_BAD_POWER_STATE [vm, expected, actual], got {details}")
ok("VM_BAD_POWER_STATE shape")

# --- events ----------------------------------------------------------------------------
first = getattr(x.event, "from")(["vm"], "", 0.0)
check(set(first) >= {"events", "valid_ref_counts", "token"}, "event.from returns {events, valid_ref_counts, token}")
check(all(e["operation"] == "add" and e["class"] == "vm" for e in first["events"]), "initial event.from lists objects as add")
token = first["token"]
clone = x.VM.clone(halted, "conformance-clone")
x.VM.set_name_label(clone, "conformance-clone-renamed")
x.VM.destroy(clone)
seen = []
deadline = time.time() + 10
while time.time() < deadline and len(seen) < 3:
    batch = getattr(x.event, "from")(["vm"], token, 5.0)
    token = batch["token"]
    seen += [e["operation"] for e in batch["events"] if e["ref"] == clone]
check(seen[:1] == ["add"] and "mod" in seen and seen[-1:] == ["del"], f"event.from reports add, mod, del; got {seen}")
injected = x.event.inject("VM", halted)
check(isinstance(injected, str) and injected, "event.inject returns a token")
ok("event.from reports add, mod and del; event.inject returns a token")

# --- snapshot, attach, detach, destroy -------------------------------------------------
running = [r for r, v in vms.items() if v["power_state"] == "Running" and not v["is_control_domain"]]
check(len(running) >= 2, "at least two running demo VMs")
source, helper = running[0], running[1]
snap = x.VM.snapshot(source, "conformance-snapshot")
srec = x.VM.get_record(snap)
check(srec["is_a_snapshot"] and srec["is_a_template"] and srec["snapshot_of"] == source,
      "VM.snapshot makes a snapshot of the VM (a template, as in xapi)")
check(snap in x.VM.get_snapshots(source), "the snapshot is in VM.snapshots")
snap_vdis = []
for vbd in srec["VBDs"]:
    b = x.VBD.get_record(vbd)
    if b["type"] == "Disk" and not b["empty"]:
        snap_vdis.append(b["VDI"])
check(len(snap_vdis) == 2, f"the snapshot has the VM's two disks, got {len(snap_vdis)}")
for vdi in snap_vdis:
    check(x.VDI.get_is_a_snapshot(vdi), "snapshot disks are VDI snapshots")
# The snapshot's disks are on the source's host-local SR: only a VM on that host can plug
# them, so the source itself takes them.
free = x.VM.get_allowed_VBD_devices(source)
vbd = x.VBD.create({"VM": source, "VDI": snap_vdis[0], "userdevice": free[0], "bootable": False,
                    "mode": "RW", "type": "Disk", "unpluggable": True, "empty": False,
                    "other_config": {}, "qos_algorithm_type": "", "qos_algorithm_params": {}})
x.VBD.plug(vbd)
check(x.VBD.get_currently_attached(vbd) and x.VBD.get_device(vbd).startswith("xvd"), "VBD.plug attaches the disk")
details = failure_of(x.VDI.destroy, snap_vdis[0])
check(details == ["VDI_IN_USE", snap_vdis[0], "destroy"], f"an attached VDI cannot be destroyed: {details}")
details = failure_of(x.VBD.plug, vbd)
check(details == ["DEVICE_ALREADY_ATTACHED", vbd], f"plugging twice fails: {details}")
x.VBD.unplug(vbd)
check(not x.VBD.get_currently_attached(vbd), "VBD.unplug detaches the disk")
x.VBD.destroy(vbd)
check(vbd not in x.VM.get_VBDs(source), "VBD.destroy removes the VBD")
task = x.Async.VM.destroy(snap)
deadline = time.time() + 10
while x.task.get_status(task) == "pending" and time.time() < deadline:
    time.sleep(0.05)
check(x.task.get_status(task) == "success", f"Async.VM.destroy task succeeds: {x.task.get_record(task)}")
x.task.destroy(task)
for vdi in snap_vdis:
    x.VDI.destroy(vdi)
check(snap not in x.VM.get_all(), "the snapshot VM is gone")
check(not any(v in x.VDI.get_all() for v in snap_vdis), "the snapshot disks are gone")
ok("VM.snapshot -> VBD.create/plug/unplug/destroy -> VM.destroy round-trips (Async task included)")

# --- CBT -------------------------------------------------------------------------------
disk = next(x.VBD.get_VDI(b) for b in x.VM.get_VBDs(source)
            if x.VBD.get_type(b) == "Disk" and x.VBD.get_userdevice(b) == "0")
x.VDI.enable_cbt(disk)
check(x.VDI.get_cbt_enabled(disk), "VDI.enable_cbt sets cbt_enabled")
base = x.VDI.snapshot(disk)
written = [0, 5, 17, 100]
for block in written:
    control("PUT", f"/sim/vdis/{disk}/data?offset={block * BLOCK + 100}", b"changed by the guest")
# A write across a block boundary marks both blocks.
control("PUT", f"/sim/vdis/{disk}/data?offset={200 * BLOCK - 4}", b"12345678")
written += [199, 200]
top = x.VDI.snapshot(disk)
bitmap = base64.b64decode(x.VDI.list_changed_blocks(base, top))
size = int(x.VDI.get_virtual_size(disk))
check(len(bitmap) == (size // BLOCK + 7) // 8, f"bitmap has one bit per 64 KiB block, got {len(bitmap)} bytes")
changed = [i for i in range(len(bitmap) * 8) if bitmap[i // 8] & (0x80 >> (i % 8))]
check(changed == sorted(written), f"CBT bitmap matches the written blocks: {changed} != {sorted(written)}")
data = control("GET", f"/sim/vdis/{top}/data?offset={5 * BLOCK + 100}&length=20")
check(data == b"changed by the guest", "the snapshot holds the written bytes")
x.VDI.data_destroy(base)
check(x.VDI.get_type(base) == "cbt_metadata", "VDI.data_destroy leaves a cbt_metadata VDI")
bitmap2 = base64.b64decode(x.VDI.list_changed_blocks(base, top))
check(bitmap2 == bitmap, "list_changed_blocks still works from the cbt_metadata VDI")
details = failure_of(x.VBD.create, {"VM": helper, "VDI": base, "userdevice": "autodetect", "bootable": False,
                                     "mode": "RO", "type": "Disk", "unpluggable": True, "empty": False,
                                     "other_config": {}, "qos_algorithm_type": "", "qos_algorithm_params": {}})
check(details == ["VDI_INCOMPATIBLE_TYPE", base, "cbt_metadata"], f"a cbt_metadata VDI cannot be attached: {details}")
for vdi in (base, top):
    x.VDI.destroy(vdi)
x.VDI.disable_cbt(disk)
ok("CBT bitmap read through the SDK matches the blocks written through /sim/")

# --- wire details: Content-Type, JSON-RPC, raw VDI transfer -------------------------------
import json  # noqa: E402

ctx = ssl._create_unverified_context()


def post(path, body, content_type):
    req = urllib.request.Request(MASTER.rstrip("/") + path, data=body, method="POST")
    req.add_header("Content-Type", content_type)
    with urllib.request.urlopen(req, context=ctx) as resp:
        return resp.headers.get("Content-Type"), resp.read()


ctype, _ = post("/", xmlrpc.client.dumps(("x", "y"), "session.login_with_password").encode(), "text/xml")
check(ctype == "text/xml", f"XML-RPC Content-Type is exactly text/xml, got {ctype!r}")
ctype, body = post("/jsonrpc", json.dumps({"jsonrpc": "2.0", "method": "session.login_with_password",
                                           "params": [USER, PASSWORD], "id": 1}).encode(), "application/json")
check(ctype == "application/json", f"JSON-RPC Content-Type is exactly application/json, got {ctype!r}")
reply = json.loads(body)
check(reply.get("jsonrpc") == "2.0" and reply.get("id") == 1 and reply["result"].startswith("OpaqueRef:"),
      f"JSON-RPC login result, got {reply}")
json_session = reply["result"]
_, body = post("/jsonrpc", json.dumps({"jsonrpc": "2.0", "method": "VM.get_record",
                                       "params": [json_session, "OpaqueRef:nope"], "id": "a"}).encode(), "application/json")
reply = json.loads(body)
check(reply.get("error") == {"code": 1, "message": "HANDLE_INVALID", "data": ["VM", "OpaqueRef:nope"]},
      f"JSON-RPC error object as xapi sends it, got {reply}")
_, body = post("/jsonrpc", json.dumps({"jsonrpc": "2.0", "method": "host.get_all_records",
                                       "params": [json_session], "id": 2}).encode(), "application/json")
hosts = json.loads(body)["result"]
check(all(isinstance(h["API_version_major"], int) for h in hosts.values()), "JSON-RPC ints are numbers")
ok("Content-Types, JSON-RPC results and xapi's JSON-RPC error object")

sr = pool["default_SR"]
vdi = x.VDI.create({"name_label": "conformance-import", "SR": sr, "virtual_size": str(4 * BLOCK),
                    "type": "user", "sharable": False, "read_only": False, "other_config": {}})
payload = bytes((i * 7) % 256 for i in range(4 * BLOCK))
req = urllib.request.Request(f"{MASTER.rstrip('/')}/import_raw_vdi?session_id={s._session}&vdi={vdi}&format=raw",
                             data=payload, method="PUT")
urllib.request.urlopen(req, context=ctx).read()
with urllib.request.urlopen(f"{MASTER.rstrip('/')}/export_raw_vdi?session_id={s._session}&vdi={vdi}&format=raw",
                            context=ctx) as resp:
    exported = resp.read()
check(exported == payload, "export_raw_vdi returns what import_raw_vdi wrote")
x.VDI.destroy(vdi)
ok("raw VDI import and export round-trip")

s.xenapi.session.logout()
print("all conformance checks passed")
