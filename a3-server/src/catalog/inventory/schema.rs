//! The inventory's tables.

/// The inventory's tables.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS pools (
    uuid TEXT PRIMARY KEY,
    ref TEXT NOT NULL,
    name TEXT NOT NULL,
    master_ref TEXT NOT NULL,
    port INTEGER NOT NULL,
    username TEXT NOT NULL,
    added_at INTEGER NOT NULL,
    synced_at INTEGER,
    connected_host TEXT,
    status TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS hosts (
    uuid TEXT PRIMARY KEY,
    pool_uuid TEXT NOT NULL REFERENCES pools(uuid) ON DELETE CASCADE,
    ref TEXT NOT NULL,
    name TEXT NOT NULL,
    address TEXT NOT NULL,
    enabled INTEGER NOT NULL,
    cert_sha256 TEXT,
    pinned_at INTEGER
);
CREATE INDEX IF NOT EXISTS hosts_ref ON hosts(pool_uuid, ref);
CREATE INDEX IF NOT EXISTS hosts_address ON hosts(address);
CREATE TABLE IF NOT EXISTS vms (
    uuid TEXT PRIMARY KEY,
    pool_uuid TEXT NOT NULL REFERENCES pools(uuid) ON DELETE CASCADE,
    ref TEXT NOT NULL,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    power_state TEXT NOT NULL,
    is_template INTEGER NOT NULL,
    is_snapshot INTEGER NOT NULL,
    is_control_domain INTEGER NOT NULL,
    snapshot_of TEXT NOT NULL,
    resident_on TEXT NOT NULL,
    memory_bytes INTEGER NOT NULL,
    vcpus INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS vms_ref ON vms(pool_uuid, ref);
CREATE TABLE IF NOT EXISTS vbds (
    uuid TEXT PRIMARY KEY,
    pool_uuid TEXT NOT NULL REFERENCES pools(uuid) ON DELETE CASCADE,
    ref TEXT NOT NULL,
    vm_ref TEXT NOT NULL,
    vdi_ref TEXT NOT NULL,
    device TEXT NOT NULL,
    userdevice TEXT NOT NULL,
    type TEXT NOT NULL,
    mode TEXT NOT NULL,
    attached INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS vbds_ref ON vbds(pool_uuid, ref);
CREATE INDEX IF NOT EXISTS vbds_vm ON vbds(pool_uuid, vm_ref);
CREATE TABLE IF NOT EXISTS vdis (
    uuid TEXT PRIMARY KEY,
    pool_uuid TEXT NOT NULL REFERENCES pools(uuid) ON DELETE CASCADE,
    ref TEXT NOT NULL,
    name TEXT NOT NULL,
    sr_ref TEXT NOT NULL,
    virtual_size INTEGER NOT NULL,
    physical_utilisation INTEGER NOT NULL,
    type TEXT NOT NULL,
    cbt_enabled INTEGER NOT NULL,
    is_snapshot INTEGER NOT NULL,
    read_only INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS vdis_ref ON vdis(pool_uuid, ref);
CREATE TABLE IF NOT EXISTS srs (
    uuid TEXT PRIMARY KEY,
    pool_uuid TEXT NOT NULL REFERENCES pools(uuid) ON DELETE CASCADE,
    ref TEXT NOT NULL,
    name TEXT NOT NULL,
    type TEXT NOT NULL,
    content_type TEXT NOT NULL,
    shared INTEGER NOT NULL,
    physical_size INTEGER NOT NULL,
    physical_utilisation INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS srs_ref ON srs(pool_uuid, ref);
CREATE TABLE IF NOT EXISTS networks (
    uuid TEXT PRIMARY KEY,
    pool_uuid TEXT NOT NULL REFERENCES pools(uuid) ON DELETE CASCADE,
    ref TEXT NOT NULL,
    name TEXT NOT NULL,
    bridge TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS networks_ref ON networks(pool_uuid, ref);
CREATE TABLE IF NOT EXISTS vifs (
    uuid TEXT PRIMARY KEY,
    pool_uuid TEXT NOT NULL REFERENCES pools(uuid) ON DELETE CASCADE,
    ref TEXT NOT NULL,
    vm_ref TEXT NOT NULL,
    network_ref TEXT NOT NULL,
    device TEXT NOT NULL,
    mac TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS vifs_ref ON vifs(pool_uuid, ref);
CREATE INDEX IF NOT EXISTS vifs_vm ON vifs(pool_uuid, vm_ref);
";
