//! `session.*`: login and logout.

use std::sync::Arc;

use a3_shared::xapi_wire::Value;

use super::{Kind, Method, Table, params, void};
use crate::errors;
use crate::model::new_ref;
use crate::state::Session;

pub(super) fn register(t: &mut Table) {
    // (uname, pwd[, version, originator]): no session, two defaulted parameters.
    t.add_method(
        "session.login_with_password",
        Method {
            required: 2,
            max: 4,
            session: false,
            has_async: false,
            kind: Kind::Sync(Arc::new(|ctx, p| {
                let user = params::string(p, 0, "uname")?;
                let pwd = params::string(p, 1, "pwd")?;
                if user != ctx.st.username || pwd != ctx.st.password {
                    return Err(errors::session_authentication_failed(user));
                }
                let r = new_ref();
                ctx.st.sessions.insert(
                    r.clone(),
                    Session {
                        user: user.to_owned(),
                        host: ctx.host.to_owned(),
                    },
                );
                Ok(Value::from(r))
            })),
        },
    );
    t.add_accessor("session.logout", 0, |ctx, p| {
        let s = params::string(p, 0, "session_id")?;
        ctx.st.sessions.remove(s);
        Ok(void())
    });
    t.add_accessor("session.get_this_host", 1, |ctx, p| {
        let s = params::string(p, 1, "self")?;
        let session = ctx
            .st
            .sessions
            .get(s)
            .ok_or_else(|| errors::session_invalid(s))?;
        Ok(Value::from(session.host.clone()))
    });
}
