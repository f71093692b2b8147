//! The web layer's one error type and its single mapping to HTTP: a JSON envelope
//! `{"error": {"code", "message"}}` for `/api` routes, the HTML error page elsewhere (see
//! [`super::render_error_pages`], which swaps the body for page routes).

use axum::Json;
use axum::extract::rejection::{FormRejection, JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::accounts::AccountError;
use crate::db::DbError;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("sign in to continue")]
    Unauthenticated,
    #[error("your role does not allow this")]
    Forbidden,
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the request body is larger than the limit of {} MiB", *.0 as f64 / 1048576.0)]
    PayloadTooLarge(usize),
    #[error(
        "the form's security token is missing or does not match; reload the page and try again"
    )]
    Csrf,
    #[error("too many attempts; wait a few minutes and try again")]
    TooManyRequests,
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// What [`AppError::into_response`] leaves in the response's extensions, so that page routes
/// can render the same error as HTML.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorBody {
    pub code: &'static str,
    pub message: String,
}

#[derive(Serialize)]
struct Envelope {
    error: ErrorBody,
}

impl AppError {
    pub fn status(&self) -> StatusCode {
        match self {
            AppError::Unauthenticated => StatusCode::UNAUTHORIZED,
            AppError::Forbidden | AppError::Csrf => StatusCode::FORBIDDEN,
            AppError::NotFound => StatusCode::NOT_FOUND,
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            AppError::Unauthenticated => "unauthenticated",
            AppError::Forbidden => "forbidden",
            AppError::NotFound => "not_found",
            AppError::BadRequest(_) => "bad_request",
            AppError::Invalid(_) => "invalid",
            AppError::Conflict(_) => "conflict",
            AppError::PayloadTooLarge(_) => "payload_too_large",
            AppError::Csrf => "csrf",
            AppError::TooManyRequests => "too_many_requests",
            AppError::Internal(_) => "internal",
        }
    }

    pub fn internal(e: impl Into<anyhow::Error>) -> Self {
        AppError::Internal(e.into())
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        if let AppError::Internal(e) = &self {
            tracing::error!("internal error: {e:#}");
        }
        let body = ErrorBody {
            code: self.code(),
            message: self.to_string(),
        };
        let mut response = (
            self.status(),
            Json(Envelope {
                error: body.clone(),
            }),
        )
            .into_response();
        response.extensions_mut().insert(body);
        response
    }
}

impl From<sqlx::Error> for AppError {
    fn from(e: sqlx::Error) -> Self {
        // Data the database refuses is the client's error: a NUL byte or other text PostgreSQL
        // cannot store (SQLSTATE class 22) or a value outside a column's CHECK (23514). The
        // statement failed, so nothing of it was stored.
        let refused =
            e.as_database_error()
                .and_then(|d| d.code())
                .map(|code| match code.as_ref() {
                    "22021" | "22P05" => {
                        Some("text must not contain NUL bytes or invalid characters")
                    }
                    "22003" => Some("a number is out of range"),
                    "22001" => Some("a text value is too long"),
                    "23514" => Some("a value is outside its allowed range"),
                    c if c.starts_with("22") => Some("a value is malformed"),
                    _ => None,
                });
        match (e, refused) {
            (sqlx::Error::RowNotFound, _) => AppError::NotFound,
            (_, Some(Some(message))) => AppError::Invalid(message.to_string()),
            (other, _) => AppError::internal(other),
        }
    }
}

impl From<DbError> for AppError {
    fn from(e: DbError) -> Self {
        AppError::internal(e)
    }
}

impl From<AccountError> for AppError {
    fn from(e: AccountError) -> Self {
        match e {
            AccountError::InvalidUsername
            | AccountError::WeakPassword
            | AccountError::UnknownRole(_)
            | AccountError::InvalidTokenName => AppError::Invalid(e.to_string()),
            AccountError::UsernameTaken(_) => AppError::Conflict(e.to_string()),
            AccountError::NoSuchUser(_) => AppError::NotFound,
            AccountError::Hashing(_) | AccountError::Sql(_) => AppError::internal(e),
        }
    }
}

fn rejection(status: StatusCode, text: String) -> AppError {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => AppError::PayloadTooLarge(super::BODY_LIMIT),
        StatusCode::UNPROCESSABLE_ENTITY => AppError::Invalid(text),
        _ => AppError::BadRequest(text),
    }
}

impl From<JsonRejection> for AppError {
    fn from(r: JsonRejection) -> Self {
        rejection(r.status(), r.body_text())
    }
}

impl From<FormRejection> for AppError {
    fn from(r: FormRejection) -> Self {
        rejection(r.status(), r.body_text())
    }
}

impl From<PathRejection> for AppError {
    fn from(r: PathRejection) -> Self {
        AppError::BadRequest(r.body_text())
    }
}

impl From<QueryRejection> for AppError {
    fn from(r: QueryRejection) -> Self {
        AppError::BadRequest(r.body_text())
    }
}

/// `Json` whose rejections become [`AppError`]s (so they use the envelope).
#[derive(axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(AppError))]
pub struct ApiJson<T>(pub T);

impl<T: Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        Json(self.0).into_response()
    }
}

/// `Form` whose rejections become [`AppError`]s.
#[derive(axum::extract::FromRequest)]
#[from_request(via(axum::Form), rejection(AppError))]
pub struct AppForm<T>(pub T);

/// `Path` whose rejections become [`AppError`]s.
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(AppError))]
pub struct AppPath<T>(pub T);

/// `Query` whose rejections become [`AppError`]s.
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(AppError))]
pub struct AppQuery<T>(pub T);
