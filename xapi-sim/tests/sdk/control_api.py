#!/usr/bin/env python3
"""The /sim/ control API over HTTPS, with the XenAPI SDK observing its effects.

Usage: control_api.py URL1 URL2 URL3 USER PASSWORD   (hosts in address order; host 1 is master)
Run by `cargo test -p xapi-sim --test sdk_conformance`.
"""

import base64
import hashlib
import json
import socket
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request

try:
    import XenAPI
except ImportError:
    print("the XenAPI SDK is missing: run `cargo xtask test` or `pip install XenAPI`")
    sys.exit(2)

URLS = sys.argv[1:4]
USER, PASSWORD = sys.argv[4:6]
ADDRS = [urllib.parse.urlparse(u).hostname for u in URLS]
PORT = urllib.parse.urlparse(URLS[0]).port
CTX = ssl._create_unverified_context()


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}")
        sys.exit(1)


def ok(what):
    print(f"ok   {what}")


def control(host, method, path, auth=True):
    req = urllib.request.Request(URLS[host].rstrip("/") + path, method=method, data=b"" if method != "GET" else None)
    if auth:
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, context=CTX) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def login_error(host):
    try:
        XenAPI.Session(URLS[host], ignore_ssl=True).xenapi.login_with_password(USER, PASSWORD)
    except XenAPI.Failure as f:
        return f.details
    return None


def fingerprint(host):
    pem = ssl.get_server_certificate((ADDRS[host], PORT))
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


status, body = control(0, "GET", "/sim/inventory", auth=False)
check(status == 401, f"the control API needs auth, got {status}")
status, inv = control(0, "GET", "/sim/inventory")
check(status == 200 and all(h["up"] for h in inv["hosts"]), f"inventory lists hosts up: {inv.get('hosts')}")
check({"VM", "VDI", "VBD", "SR", "host", "pool", "network", "PIF"} <= set(inv["objects"]), "inventory has every class")
master_ref = inv["master"]
check(inv["objects"]["host"][master_ref]["address"] == ADDRS[0], "host 1 is the master")
ok("GET /sim/inventory with auth")

status, body = control(0, "POST", f"/sim/hosts/{ADDRS[0]}/down")
check(status == 409, f"a host cannot take down its own listener, got {status} {body}")
status, body = control(1, "POST", f"/sim/hosts/{ADDRS[0]}/down")
check(status == 200, f"host 1 down through host 2: {status} {body}")
try:
    socket.create_connection((ADDRS[0], PORT), timeout=5).close()
    check(False, "a down host refuses connections")
except ConnectionRefusedError:
    pass
ok("a host taken down refuses connections")

status, body = control(1, "POST", f"/sim/master?host={ADDRS[1]}")
check(status == 200, f"make host 2 master: {status} {body}")
check(login_error(1) is None, "login on the new master works")
check(login_error(2) == ["HOST_IS_SLAVE", ADDRS[1]], f"supporters name the new master: {login_error(2)}")
status, body = control(1, "POST", f"/sim/hosts/{ADDRS[0]}/up")
check(status == 200, f"host 1 up again: {status} {body}")
check(login_error(0) == ["HOST_IS_SLAVE", ADDRS[1]], f"the old master is now a supporter: {login_error(0)}")
ok("POST /sim/master moves the master; hosts come back up")

before = fingerprint(2)
status, body = control(1, "POST", f"/sim/hosts/{ADDRS[2]}/new-certificate")
check(status == 200, f"new certificate: {status} {body}")
after = fingerprint(2)
check(after != before and after == body["fingerprint"], "host 3 now presents the new certificate")
ok("POST /sim/hosts/{host}/new-certificate replaces the certificate")

status, body = control(1, "GET", "/sim/nowhere")
check(status == 404 and "error" in body, "unknown endpoints give a JSON error")
print("all control API checks passed")
