//! `pool.designate_new_master`.

use super::{Table, params, void};

pub(super) fn register(t: &mut Table) {
    t.add("pool.designate_new_master", 1, 0, |ctx, p| {
        let host = params::object(ctx.st, p, 1, "host")?;
        let pool = ctx.st.pool.clone();
        ctx.st.db.set("pool", &pool, "master", host)?;
        Ok(void())
    });
}
