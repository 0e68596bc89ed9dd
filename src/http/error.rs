//! One error type for the whole service, one kind → status mapping, and one body shape per API
//! family: TEI routes answer `{"error", "error_type"}`, `/v1` routes the OpenAI error object,
//! `/model` the CML envelope `{"success": false, "error"}`. The core layer's [`InferError`] comes
//! in through [`ApiError::from_infer`], the one table from domain errors to kinds.

use crate::infer::InferError;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// What went wrong, independent of how it is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Malformed JSON, wrong types, empty input, bad parameter values.
    Validation,
    /// An input is longer than the model accepts and truncation was refused.
    TooLong,
    /// More inputs in one request than `--max-client-batch-size`.
    TooManyInputs,
    /// Body over `--payload-limit`.
    PayloadTooLarge,
    /// Concurrency limit reached.
    Overloaded,
    /// Missing or wrong API key.
    Unauthorized,
    /// No such route.
    NotFound,
    /// Route exists, method does not.
    MethodNotAllowed,
    /// Shutting down, or the engine has stopped.
    Unavailable,
    /// The served model cannot do what was asked: a route of another task or of the other
    /// model kind (an embedding route on a generation model, or back), or a head that gave NaN.
    /// TEI answers these 424 (`backend`), so one kind and one status serve them all.
    Unsupported,
    /// A failure inside the server.
    Internal,
}

impl ErrorKind {
    /// The single status mapping used by every route.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::Validation | ErrorKind::TooLong | ErrorKind::TooManyInputs => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Unsupported => StatusCode::FAILED_DEPENDENCY,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// TEI's `error_type` vocabulary.
    fn tei_type(self) -> &'static str {
        match self {
            ErrorKind::Validation | ErrorKind::TooLong | ErrorKind::TooManyInputs => "validation",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::NotFound => "not_found",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::Unavailable => "unhealthy",
            ErrorKind::Internal | ErrorKind::Unsupported => "backend",
        }
    }

    /// OpenAI's `error.type` vocabulary.
    fn openai_type(self) -> &'static str {
        match self {
            ErrorKind::Validation
            | ErrorKind::TooLong
            | ErrorKind::TooManyInputs
            | ErrorKind::PayloadTooLarge
            | ErrorKind::NotFound
            | ErrorKind::MethodNotAllowed
            | ErrorKind::Unsupported => "invalid_request_error",
            ErrorKind::Overloaded => "rate_limit_exceeded",
            ErrorKind::Unauthorized => "authentication_error",
            ErrorKind::Unavailable | ErrorKind::Internal => "server_error",
        }
    }
}

/// Which API family's error shape to answer with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiFamily {
    Tei,
    OpenAi,
    Cml,
}

impl ApiFamily {
    /// The family a path belongs to (for errors raised outside handlers: auth, 404, 413).
    pub fn for_path(path: &str) -> Self {
        if path.starts_with("/v1/") || path == "/v1" {
            ApiFamily::OpenAi
        } else if path == "/model" {
            ApiFamily::Cml
        } else {
            ApiFamily::Tei
        }
    }
}

/// An error on its way to the client.
#[derive(Clone, Debug)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
    pub family: ApiFamily,
}

impl ApiError {
    /// An error of `kind` shown in `family`'s shape.
    pub fn new(family: ApiFamily, kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            family,
        }
    }

    /// 422 with a message.
    pub fn validation(family: ApiFamily, message: impl Into<String>) -> Self {
        Self::new(family, ErrorKind::Validation, message)
    }

    /// A core-layer error shown in `family`'s shape: the one mapping from domain errors to kinds.
    pub fn from_infer(family: ApiFamily, error: InferError) -> Self {
        let kind = match &error {
            InferError::EmptyInput { .. }
            | InferError::Dimensions(_)
            | InferError::UnknownPrompt { .. }
            | InferError::Tokenizer(_) => ErrorKind::Validation,
            InferError::TooManyInputs { .. } => ErrorKind::TooManyInputs,
            InferError::TooLong { .. } => ErrorKind::TooLong,
            InferError::Overloaded { .. } => ErrorKind::Overloaded,
            InferError::Stopped => ErrorKind::Unavailable,
            InferError::Internal(_) => ErrorKind::Internal,
            InferError::WrongTask { .. } | InferError::NanScore => ErrorKind::Unsupported,
        };
        Self::new(family, kind, error.to_string())
    }

    fn body(&self) -> serde_json::Value {
        match self.family {
            ApiFamily::Tei => json!({"error": self.message, "error_type": self.kind.tei_type()}),
            ApiFamily::OpenAi => json!({"error": {
                "message": self.message,
                "type": self.kind.openai_type(),
                "param": null,
                "code": self.kind.status().as_u16().to_string(),
            }}),
            ApiFamily::Cml => {
                json!({"success": false, "error": self.message, "error_type": self.kind.tei_type()})
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.kind.status(), Json(self.body())).into_response();
        if self.kind == ErrorKind::Overloaded {
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from_static("1"));
        }
        if self.kind == ErrorKind::PayloadTooLarge {
            // The rest of the body was never read: the connection cannot carry another request,
            // so tell the client not to reuse it.
            response
                .headers_mut()
                .insert("connection", HeaderValue::from_static("close"));
        }
        if self.kind == ErrorKind::Unauthorized {
            response
                .headers_mut()
                .insert("www-authenticate", HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::pooling::DimensionsError;

    /// One of each core error kind, with the status and TEI / OpenAI error types it must get.
    fn every_core_error() -> Vec<(InferError, u16, &'static str, &'static str)> {
        vec![
            (
                InferError::EmptyInput { what: "inputs" },
                422,
                "validation",
                "invalid_request_error",
            ),
            (
                InferError::TooManyInputs {
                    count: 65,
                    limit: 64,
                },
                422,
                "validation",
                "invalid_request_error",
            ),
            (
                InferError::TooLong {
                    index: 0,
                    tokens: 257,
                    limit: 256,
                },
                422,
                "validation",
                "invalid_request_error",
            ),
            (
                InferError::Dimensions(DimensionsError { got: 0, max: 384 }),
                422,
                "validation",
                "invalid_request_error",
            ),
            (
                InferError::UnknownPrompt {
                    name: "q".into(),
                    known: "none".into(),
                },
                422,
                "validation",
                "invalid_request_error",
            ),
            (
                InferError::Tokenizer("bad".into()),
                422,
                "validation",
                "invalid_request_error",
            ),
            (
                InferError::Overloaded { limit: 2 },
                429,
                "overloaded",
                "rate_limit_exceeded",
            ),
            (
                InferError::WrongTask {
                    operation: crate::infer::Operation::Rerank,
                    served: crate::infer::ModelKind::Classifier,
                },
                424,
                "backend",
                "invalid_request_error",
            ),
            (
                InferError::NanScore,
                424,
                "backend",
                "invalid_request_error",
            ),
            (InferError::Stopped, 503, "unhealthy", "server_error"),
            (
                InferError::Internal("boom".into()),
                500,
                "backend",
                "server_error",
            ),
        ]
    }

    fn body_of(response: Response) -> (u16, serde_json::Value) {
        let status = response.status().as_u16();
        let bytes = futures_body(response);
        (
            status,
            serde_json::from_slice(&bytes).expect("JSON error body"),
        )
    }

    /// The buffered body of a response built from `Json` (ready at once, no runtime needed).
    fn futures_body(response: Response) -> Vec<u8> {
        use axum::body::HttpBody as _;
        let mut body = response.into_body();
        let waker = std::task::Waker::noop();
        let mut context = std::task::Context::from_waker(waker);
        let mut out = Vec::new();
        while let std::task::Poll::Ready(Some(Ok(frame))) =
            std::pin::Pin::new(&mut body).poll_frame(&mut context)
        {
            if let Ok(data) = frame.into_data() {
                out.extend_from_slice(&data);
            }
        }
        out
    }

    #[test]
    fn every_core_error_kind_has_its_body_in_every_family() {
        for (error, status, tei_type, openai_type) in every_core_error() {
            let message = error.to_string();
            for family in [ApiFamily::Tei, ApiFamily::OpenAi, ApiFamily::Cml] {
                let response = ApiError::from_infer(family, error.clone()).into_response();
                if status == 429 {
                    assert_eq!(response.headers()["retry-after"], "1");
                }
                let (got, body) = body_of(response);
                assert_eq!(got, status, "{error:?} in {family:?}");
                match family {
                    ApiFamily::Tei => {
                        assert_eq!(body["error"], message.as_str());
                        assert_eq!(body["error_type"], tei_type, "{error:?}");
                    }
                    ApiFamily::OpenAi => {
                        assert_eq!(body["error"]["message"], message.as_str());
                        assert_eq!(body["error"]["type"], openai_type, "{error:?}");
                        assert_eq!(body["error"]["code"], status.to_string());
                        assert!(body["error"]["param"].is_null());
                    }
                    ApiFamily::Cml => {
                        assert_eq!(body["success"], false);
                        assert_eq!(body["error"], message.as_str());
                        assert_eq!(body["error_type"], tei_type, "{error:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn families_and_statuses() {
        assert_eq!(ApiFamily::for_path("/v1/embeddings"), ApiFamily::OpenAi);
        assert_eq!(ApiFamily::for_path("/model"), ApiFamily::Cml);
        assert_eq!(ApiFamily::for_path("/embed"), ApiFamily::Tei);
        assert_eq!(
            ErrorKind::TooLong.status(),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        let openai = ApiError::new(ApiFamily::OpenAi, ErrorKind::Overloaded, "x").body();
        assert_eq!(openai["error"]["type"], "rate_limit_exceeded");
        let tei = ApiError::validation(ApiFamily::Tei, "bad").body();
        assert_eq!(tei["error_type"], "validation");
    }
}
