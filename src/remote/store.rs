//! The four kinds of store a bundle can be read from, behind one small interface: list the
//! folder (where the store can), read a small file whole, size a file, and stream a byte range.
//! Everything above this (verification order, retries, parallel ranges, hashing) is the same
//! for every store.

use super::error::{FetchError, RemoteError};
use super::file::FileStore;
use super::http::HttpStore;
use super::oci::OciStore;
use super::s3::S3Store;
use super::tls::Roots;
use super::url::ModelUrl;
use super::FetchOptions;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use std::collections::BTreeMap;
use std::ops::Range;

/// Bytes of one ranged read, in order.
pub type ByteStream = BoxStream<'static, Result<Bytes, FetchError>>;

/// One file a store lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub size: u64,
    /// The sha256 (hex) the store itself addresses the file by, where it has one (OCI layers).
    pub digest: Option<String>,
}

/// A store holding one bundle.
#[derive(Debug)]
pub enum Store {
    S3(S3Store),
    Http(HttpStore),
    Oci(Box<OciStore>),
    File(FileStore),
}

impl Store {
    /// Connects to the store `url` names (for OCI: reads and checks the artifact's manifest).
    pub async fn open(
        url: &ModelUrl,
        roots: &Roots,
        options: &FetchOptions,
    ) -> Result<Self, RemoteError> {
        let client = || roots.http_client(options.read_timeout);
        Ok(match url {
            ModelUrl::S3 { bucket, prefix } => Store::S3(S3Store::new(bucket, prefix, client()?)?),
            ModelUrl::Http { base } => Store::Http(HttpStore::new(client()?, base.clone())),
            ModelUrl::Oci { .. } => Store::Oci(Box::new(
                OciStore::open(url, roots, options.read_timeout).await?,
            )),
            ModelUrl::File { dir } => Store::File(FileStore::new(dir.clone())),
        })
    }

    /// Every file in the bundle's folder with its size, or `None` for a store that cannot list
    /// (plain HTTP).
    pub async fn list(&self) -> Result<Option<BTreeMap<String, Listed>>, FetchError> {
        match self {
            Store::S3(s) => s.list().await.map(Some),
            Store::Http(_) => Ok(None),
            Store::Oci(s) => Ok(Some(s.list())),
            Store::File(s) => s.list().await.map(Some),
        }
    }

    /// A whole file of at most `limit` bytes, `None` when the store does not have it.
    pub async fn read_small(&self, name: &str, limit: u64) -> Result<Option<Vec<u8>>, FetchError> {
        match self {
            Store::S3(s) => s.read_small(name, limit).await,
            Store::Http(s) => s.read_small(name, limit).await,
            Store::Oci(s) => s.read_small(name, limit).await,
            Store::File(s) => s.read_small(name, limit).await,
        }
    }

    /// A file's size where no listing gave it (plain HTTP), `None` when it is missing.
    pub async fn size(&self, name: &str) -> Result<Option<u64>, FetchError> {
        match self {
            Store::Http(s) => s.size(name).await,
            Store::S3(_) | Store::Oci(_) | Store::File(_) => Ok(None),
        }
    }

    /// The bytes of `range` of a file.
    pub async fn stream(&self, name: &str, range: Range<u64>) -> Result<ByteStream, FetchError> {
        match self {
            Store::S3(s) => s.stream(name, range).await,
            Store::Http(s) => s.stream(name, range).await,
            Store::Oci(s) => s.stream(name, range).await,
            Store::File(s) => s.stream(name, range).await,
        }
    }

    /// True when the store's client retries transient failures itself (object_store does, with
    /// backoff, for requests and interrupted bodies alike), so the downloader must not retry
    /// on top of it.
    pub fn retries_internally(&self) -> bool {
        matches!(self, Store::S3(_))
    }

    /// True for stores whose failures are never worth retrying (a local folder).
    pub fn is_local(&self) -> bool {
        matches!(self, Store::File(_))
    }
}

/// Bytes `skip..skip + len` of a stream, for servers that answer a range request with the
/// whole object (200 instead of 206): what comes before is dropped, and the answer is ended
/// once `len` bytes were passed on (the rest of the object is never read).
pub fn window(stream: ByteStream, skip: u64, len: u64) -> ByteStream {
    stream
        .scan((skip, len), |(skip, left), chunk| {
            let out = match chunk {
                Ok(_) if *left == 0 => None,
                Ok(mut bytes) => {
                    let drop = (*skip).min(bytes.len() as u64) as usize;
                    *skip -= drop as u64;
                    let mut rest = bytes.split_off(drop);
                    rest.truncate((*left).min(rest.len() as u64) as usize);
                    *left -= rest.len() as u64;
                    Some(Ok(rest))
                }
                Err(e) => Some(Err(e)),
            };
            std::future::ready(out)
        })
        .filter(|chunk| std::future::ready(!matches!(chunk, Ok(b) if b.is_empty())))
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_window_is_exactly_the_asked_bytes_across_chunks() {
        let chunks = || -> ByteStream {
            let chunks: Vec<Result<Bytes, FetchError>> = vec![
                Ok(Bytes::from_static(b"abc")),
                Ok(Bytes::from_static(b"defg")),
                Ok(Bytes::from_static(b"hi")),
            ];
            futures_util::stream::iter(chunks).boxed()
        };
        for (skip, len, expected) in [
            (5, 4, &b"fghi"[..]),
            (0, 9, b"abcdefghi"),
            (2, 3, b"cde"),
            (4, 1, b"e"),
        ] {
            let out: Vec<u8> = window(chunks(), skip, len)
                .map(|c| c.unwrap().to_vec())
                .concat()
                .await;
            assert_eq!(out, expected, "skip {skip} len {len}");
        }
    }
}
