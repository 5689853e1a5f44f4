//! Resolves kernel modules and their dependencies from the kernel's `modules.dep`.

use std::collections::BTreeMap;

/// What can go wrong resolving modules.
#[derive(Debug, thiserror::Error)]
pub enum ModulesError {
    /// A wanted module is not in `modules.dep`.
    #[error("kernel module {0} is not in modules.dep; is this the right kernel?")]
    Missing(String),
}

/// A module's name as `modprobe` knows it: the file name without directory and `.ko*`
/// suffix, with `-` and `_` equivalent.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// The paths (relative to the modules dir) of `wanted` and everything they depend on, in
/// an order where each module comes after its dependencies.
pub fn load_order(modules_dep: &str, wanted: &[&str]) -> Result<Vec<String>, ModulesError> {
    let mut deps: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for line in modules_dep.lines() {
        let Some((path, rest)) = line.split_once(':') else {
            continue;
        };
        let needs = rest.split_whitespace().map(module_name).collect();
        deps.insert(module_name(path), (path.to_owned(), needs));
    }
    let mut order = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    fn visit(
        name: &str,
        deps: &BTreeMap<String, (String, Vec<String>)>,
        seen: &mut std::collections::BTreeSet<String>,
        order: &mut Vec<String>,
    ) -> Result<(), ModulesError> {
        if !seen.insert(name.to_owned()) {
            return Ok(());
        }
        let (path, needs) = deps
            .get(name)
            .ok_or_else(|| ModulesError::Missing(name.to_owned()))?;
        for need in needs {
            visit(need, deps, seen, order)?;
        }
        order.push(path.clone());
        Ok(())
    }
    for w in wanted {
        visit(&module_name(w), &deps, &mut seen, &mut order)?;
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/drivers/block/xen-blkfront.ko.xz:
";

    #[test]
    fn dependencies_come_first() {
        let order = load_order(DEP, &["virtio_net", "xen-blkfront"]).unwrap();
        let pos = |m: &str| order.iter().position(|p| p.contains(m)).unwrap();
        assert!(pos("virtio_ring") < pos("virtio.ko"));
        assert!(pos("/failover") < pos("net_failover"));
        assert!(pos("virtio.ko") < pos("virtio_net"));
        assert_eq!(order.len(), 6);
        assert!(order.contains(&"kernel/drivers/block/xen-blkfront.ko.xz".to_owned()));
    }

    #[test]
    fn a_missing_module_is_named() {
        let err = load_order(DEP, &["xenfs"]).unwrap_err();
        assert!(err.to_string().contains("xenfs"));
    }
}
