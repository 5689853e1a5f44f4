//! Every error's HTTP status, in one place: handlers return [`ApiError`], and each area's
//! error enum becomes one here, so the mapping of failures to statuses is read in one file.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::catalog::ip_pool::IpListError;
use crate::dataport::DispatchError;
use crate::fleet::FleetError;
use crate::fleet::ips::IpsError;
use crate::inventory::InventoryError;
use crate::jobs::StartError;
use crate::sr::SrError;
use crate::store::StoreError;
use crate::xapi::XapiError;

/// An API failure: an HTTP status and a message that names the thing and the fix.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A human-readable message.
    pub message: String,
}

impl ApiError {
    /// 400: the request itself is wrong.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    /// 404: the named object does not exist.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
        }
    }

    /// 500: the server failed; the message says where.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(ErrorBody {
                error: &self.message,
            }),
        )
            .into_response()
    }
}

impl From<crate::catalog::CatalogError> for ApiError {
    fn from(e: crate::catalog::CatalogError) -> ApiError {
        ApiError::internal(e.to_string())
    }
}

impl From<DispatchError> for ApiError {
    fn from(e: DispatchError) -> ApiError {
        match e {
            DispatchError::NotConnected(_) => ApiError {
                status: StatusCode::CONFLICT,
                message: e.to_string(),
            },
            DispatchError::BadRequest(m) => ApiError::bad_request(m),
            DispatchError::Store(e) => ApiError::from(e),
            DispatchError::Failed(_) => ApiError {
                status: StatusCode::BAD_GATEWAY,
                message: e.to_string(),
            },
        }
    }
}

impl From<crate::dataport::storage::StorageError> for ApiError {
    fn from(e: crate::dataport::storage::StorageError) -> ApiError {
        if e.is_not_found() {
            ApiError::not_found(e.to_string())
        } else if let crate::dataport::storage::StorageError::BadRequest(m) = e {
            ApiError::bad_request(m)
        } else {
            ApiError::internal(e.to_string())
        }
    }
}

impl From<InventoryError> for ApiError {
    fn from(e: InventoryError) -> ApiError {
        let message = e.to_string();
        ApiError::from_inventory_ref(&e, message)
    }
}

impl ApiError {
    /// The status of an inventory failure, with `message`.
    fn from_inventory_ref(e: &InventoryError, message: String) -> ApiError {
        let status = match e {
            InventoryError::BadAddress(_) => StatusCode::BAD_REQUEST,
            InventoryError::UnknownHost(_) | InventoryError::UnknownPool(_) => {
                StatusCode::NOT_FOUND
            }
            InventoryError::Xapi(XapiError::AuthenticationFailed { .. }) => StatusCode::BAD_REQUEST,
            InventoryError::Xapi(XapiError::CertificateChanged { .. }) => StatusCode::CONFLICT,
            InventoryError::Xapi(_)
            | InventoryError::MasterLoop { .. }
            | InventoryError::NoUsableHost { .. }
            | InventoryError::NoCertificate { .. } => StatusCode::BAD_GATEWAY,
            InventoryError::Catalog(_)
            | InventoryError::Secrets { .. }
            | InventoryError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError { status, message }
    }
}

impl From<StartError> for ApiError {
    fn from(e: StartError) -> ApiError {
        match e {
            StartError::BadRequest(m) => ApiError::bad_request(m),
            StartError::Catalog(c) => c.into(),
        }
    }
}

impl From<SrError> for ApiError {
    fn from(e: SrError) -> ApiError {
        ApiError::internal(e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        if e.is_not_found() {
            ApiError::not_found(e.to_string())
        } else if matches!(
            e,
            StoreError::GcRunning { .. } | StoreError::CatalogBehind { .. }
        ) {
            ApiError {
                status: StatusCode::CONFLICT,
                message: e.to_string(),
            }
        } else {
            ApiError::internal(e.to_string())
        }
    }
}

impl From<IpsError> for ApiError {
    fn from(e: IpsError) -> ApiError {
        match e {
            IpsError::UnknownPool(_) | IpsError::UnknownNetwork { .. } => {
                ApiError::not_found(e.to_string())
            }
            // The pool's answers count as the request's fault, as before the move.
            IpsError::BadAddress(_)
            | IpsError::List(IpListError::InUse { .. })
            | IpsError::Inventory(_)
            | IpsError::Xapi(_) => ApiError::bad_request(e.to_string()),
            IpsError::List(IpListError::Catalog(c)) | IpsError::Catalog(c) => c.into(),
        }
    }
}

impl From<FleetError> for ApiError {
    fn from(e: FleetError) -> ApiError {
        let status = match &e {
            FleetError::UnknownAbd(_) => StatusCode::NOT_FOUND,
            FleetError::Busy { .. } | FleetError::NoVm { .. } => StatusCode::CONFLICT,
            FleetError::Inventory(i) => return ApiError::from_inventory_ref(i, e.to_string()),
            FleetError::Xapi(_)
            | FleetError::BadAddress { .. }
            | FleetError::NoAddress(_)
            | FleetError::NotConnected { .. }
            | FleetError::Sr(_)
            | FleetError::Provisioning { .. } => StatusCode::BAD_GATEWAY,
            FleetError::UnspecifiedDataAddress(_)
            | FleetError::Dns(_)
            | FleetError::Template(_)
            | FleetError::Catalog(_)
            | FleetError::Pki(_)
            | FleetError::Key(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError {
            status,
            message: e.to_string(),
        }
    }
}
