//! `file:///dir/`: a bundle folder on a mounted volume (an NFS export, a CSI-mounted bucket, a
//! PersistentVolume), read the same way as remote ones: listed, verified before the payload is
//! read, every file read into memory and hashed there. Nothing is mapped, so a later change of
//! the files cannot change what was verified.
//!
//! Listing follows Kubernetes volume conventions: names starting with `.` (the `..data` links
//! of Secret and ConfigMap mounts) are not part of the bundle, sub-folders are ignored, and
//! symbolic links to regular files count as the files they point to.

use super::error::{FetchError, FetchErrorKind};
use super::store::{ByteStream, Listed};
use bytes::BytesMut;
use std::collections::BTreeMap;
use std::io::SeekFrom;
use std::ops::Range;
use std::path::PathBuf;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

const READ_CHUNK: usize = 1 << 20;

/// A bundle folder on a local or mounted filesystem.
#[derive(Debug)]
pub struct FileStore {
    dir: PathBuf,
}

impl FileStore {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    fn error(&self, name: &str, e: &std::io::Error) -> FetchError {
        let kind = match e.kind() {
            std::io::ErrorKind::NotFound => FetchErrorKind::NotFound,
            std::io::ErrorKind::PermissionDenied => FetchErrorKind::Denied,
            _ => FetchErrorKind::Permanent,
        };
        FetchError::new(
            kind,
            self.dir.join(name).display().to_string(),
            e.to_string(),
        )
    }

    /// The regular files directly in the folder, by name.
    pub async fn list(&self) -> Result<BTreeMap<String, Listed>, FetchError> {
        let dir = self.dir.clone();
        let listed = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
            let mut listed = BTreeMap::new();
            for entry in std::fs::read_dir(&dir)? {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                // Follows symbolic links, as opening the file will.
                let metadata = std::fs::metadata(entry.path())?;
                if metadata.is_file() {
                    listed.insert(
                        name,
                        Listed {
                            size: metadata.len(),
                            digest: None,
                        },
                    );
                }
            }
            Ok(listed)
        })
        .await
        .map_err(|e| {
            FetchError::new(
                FetchErrorKind::Permanent,
                self.dir.display().to_string(),
                e.to_string(),
            )
        })?;
        listed.map_err(|e| self.error("", &e))
    }

    /// A whole small file, `None` when absent.
    pub async fn read_small(&self, name: &str, limit: u64) -> Result<Option<Vec<u8>>, FetchError> {
        let path = self.dir.join(name);
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.error(name, &e)),
        };
        let mut bytes = Vec::new();
        (&mut file)
            .take(limit + 1)
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| self.error(name, &e))?;
        if bytes.len() as u64 > limit {
            return Err(FetchError::new(
                FetchErrorKind::Permanent,
                path.display().to_string(),
                format!("larger than the {limit} bytes a signing file may have"),
            ));
        }
        Ok(Some(bytes))
    }

    /// The bytes of `range`, read in 1 MiB steps.
    pub async fn stream(&self, name: &str, range: Range<u64>) -> Result<ByteStream, FetchError> {
        let path = self.dir.join(name);
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| self.error(name, &e))?;
        file.seek(SeekFrom::Start(range.start))
            .await
            .map_err(|e| self.error(name, &e))?;
        let what = path.display().to_string();
        let remaining = range.end - range.start;
        let stream = futures_util::stream::try_unfold(
            (file, remaining, what),
            |(mut file, remaining, what)| async move {
                if remaining == 0 {
                    return Ok(None);
                }
                let want = remaining.min(READ_CHUNK as u64) as usize;
                let mut chunk = BytesMut::zeroed(want);
                let read = file.read(&mut chunk).await.map_err(|e| {
                    FetchError::new(FetchErrorKind::Permanent, &what, e.to_string())
                })?;
                if read == 0 {
                    // Shorter than listed: the downloader reports it.
                    return Ok(None);
                }
                chunk.truncate(read);
                Ok(Some((
                    chunk.freeze(),
                    (file, remaining - read as u64, what),
                )))
            },
        );
        Ok(Box::pin(stream))
    }
}
