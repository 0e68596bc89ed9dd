//! `https://host/prefix/` (and `http://`): a bundle served as plain files by any web server or
//! object store front end, read with GET and `Range`.
//!
//! HTTP has no listing, so files beyond what MANIFEST lists cannot be seen here (they are never
//! fetched either); a listed file that is missing is a 404 and refused as missing.

use super::error::FetchError;
use super::store::ByteStream;
use futures_util::StreamExt;
use reqwest::header::{CONTENT_LENGTH, RANGE};
use reqwest::StatusCode;
use std::ops::Range;

/// A bundle folder on a web server.
#[derive(Debug)]
pub struct HttpStore {
    client: reqwest::Client,
    base: String,
}

impl HttpStore {
    pub fn new(client: reqwest::Client, base: String) -> Self {
        Self { client, base }
    }

    /// Sends `request`; `None` on 404 (the file is not there), the answer when it succeeded,
    /// and any other status or failure as a classified error.
    async fn present(
        &self,
        request: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<Option<reqwest::Response>, FetchError> {
        let response = request
            .send()
            .await
            .map_err(|e| FetchError::from_reqwest(url, &e))?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        check_status(url, response).await.map(Some)
    }

    fn url(&self, name: &str) -> String {
        format!("{}{name}", self.base)
    }

    /// A whole small file, `None` on 404; refuses anything longer than `limit`.
    pub async fn read_small(&self, name: &str, limit: u64) -> Result<Option<Vec<u8>>, FetchError> {
        let url = self.url(name);
        let Some(response) = self.present(self.client.get(&url), &url).await? else {
            return Ok(None);
        };
        if response.content_length().is_some_and(|len| len > limit) {
            return Err(too_large(&url, limit));
        }
        let mut body = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| FetchError::from_reqwest(&url, &e))?;
            if body.len() as u64 + chunk.len() as u64 > limit {
                return Err(too_large(&url, limit));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Some(body))
    }

    /// A file's size from HEAD's Content-Length, `None` on 404.
    pub async fn size(&self, name: &str) -> Result<Option<u64>, FetchError> {
        let url = self.url(name);
        let Some(response) = self.present(self.client.head(&url), &url).await? else {
            return Ok(None);
        };
        // reqwest's content_length() is the body's, which a HEAD answer has none of.
        let length = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| {
                FetchError::new(
                    super::error::FetchErrorKind::Permanent,
                    &url,
                    "the server sends no Content-Length for HEAD, so the file cannot be sized before download",
                )
            })?;
        Ok(Some(length))
    }

    /// The bytes of `range`. A server that ignores `Range` (200 instead of 206) is still read
    /// correctly: the bytes before the range are skipped, and the answer is cut at its end.
    pub async fn stream(&self, name: &str, range: Range<u64>) -> Result<ByteStream, FetchError> {
        let url = self.url(name);
        let response = self
            .client
            .get(&url)
            .header(RANGE, format!("bytes={}-{}", range.start, range.end - 1))
            .send()
            .await
            .map_err(|e| FetchError::from_reqwest(&url, &e))?;
        let response = check_status(&url, response).await?;
        let whole_object = response.status() != StatusCode::PARTIAL_CONTENT;
        let error_url = url.clone();
        let stream = response
            .bytes_stream()
            .map(move |chunk| chunk.map_err(|e| FetchError::from_reqwest(&error_url, &e)))
            .boxed();
        Ok(if whole_object {
            super::store::window(stream, range.start, range.end - range.start)
        } else {
            stream
        })
    }
}

async fn check_status(
    url: &str,
    response: reqwest::Response,
) -> Result<reqwest::Response, FetchError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.text().await.unwrap_or_default();
    Err(FetchError::status(url, status.as_u16(), &body))
}

fn too_large(url: &str, limit: u64) -> FetchError {
    FetchError::new(
        super::error::FetchErrorKind::Permanent,
        url,
        format!("larger than the {limit} bytes a signing file may have"),
    )
}
