//! JSON documents too large to read whole (WAL-G's sentinels from before
//! `files_metadata.json`, which carry every file of the backup), read in
//! bounded memory: parsed as they download into typed structs that hold
//! only the fields pgdrill reads (the others are skipped, not kept), with
//! every token (a string, a number, a literal) at most [`MAX_TOKEN`]
//! bytes. A read then takes what it keeps plus a small buffer, whatever
//! the object holds; parsing into a generic JSON value took about 17 times
//! the document's size, and a long token is buffered whole by the parser.

use std::io::{self, BufReader, Read};

use futures::TryStreamExt;
use serde::de::DeserializeOwned;

use crate::backup::store::{Key, Store};
use crate::backup::BackupError;

/// The longest token a streamed document may hold: far above any name,
/// path, digest or number a sentinel carries.
pub const MAX_TOKEN: usize = 1 << 20;

/// Reads the document `key` as `T` while it downloads.
pub async fn read_streamed<T: DeserializeOwned + Send + 'static>(
    store: &dyn Store,
    key: &Key,
) -> Result<T, BackupError> {
    let stream = store.get_stream(key).await?.map_err(io::Error::other);
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
    let parsed = tokio::task::spawn_blocking(move || {
        serde_json::from_reader::<_, T>(BufReader::new(TokenLimit::new(reader)))
    })
    .await
    .map_err(BackupError::internal("the JSON reader task"))?;
    parsed.map_err(|e| BackupError::Corrupt {
        key: key.clone(),
        detail: match e.io_error_kind() {
            Some(_) => format!("reading it failed: {e}"),
            None => format!("not the JSON expected: {e}"),
        },
    })
}

/// A reader of JSON text that fails once a token runs longer than
/// [`MAX_TOKEN`] bytes, before the parser buffers it.
struct TokenLimit<R> {
    inner: R,
    in_string: bool,
    escaped: bool,
    /// Bytes of the current token so far.
    run: usize,
}

impl<R> TokenLimit<R> {
    fn new(inner: R) -> TokenLimit<R> {
        TokenLimit {
            inner,
            in_string: false,
            escaped: false,
            run: 0,
        }
    }

    fn scan(&mut self, bytes: &[u8]) -> io::Result<()> {
        for &b in bytes {
            if self.in_string {
                match (self.escaped, b) {
                    (true, _) => self.escaped = false,
                    (false, b'\\') => self.escaped = true,
                    (false, b'"') => {
                        self.in_string = false;
                        self.run = 0;
                        continue;
                    }
                    _ => {}
                }
                self.run += 1;
            } else if b == b'"' {
                self.in_string = true;
                self.run = 0;
            } else if b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.') {
                self.run += 1;
            } else {
                self.run = 0;
            }
            if self.run > MAX_TOKEN {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("a token longer than {MAX_TOKEN} bytes"),
                ));
            }
        }
        Ok(())
    }
}

impl<R: Read> Read for TokenLimit<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.scan(&buf[..n])?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limited(text: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        TokenLimit::new(text).read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn long_tokens_are_refused_and_long_documents_are_not() {
        let mut many = b"{\"Files\":{".to_vec();
        for i in 0..100_000 {
            many.extend_from_slice(format!("\"/base/1/{i}\":{{\"IsSkipped\":false}},").as_bytes());
        }
        many.extend_from_slice(b"\"x\":1}}");
        assert!(limited(&many).is_ok(), "a long document of short tokens");
        let escaped = format!(
            "{{\"a\":\"{}\\\"{}\"}}",
            "x".repeat(MAX_TOKEN / 2),
            "y".repeat(MAX_TOKEN / 2 - 2)
        );
        assert!(
            limited(escaped.as_bytes()).is_ok(),
            "an escaped quote does not end the token"
        );
        for long in [
            format!("{{\"a\":\"{}\"}}", "x".repeat(MAX_TOKEN + 1)),
            format!("{{\"{}\":1}}", "k".repeat(MAX_TOKEN + 1)),
            format!("{{\"a\":1{}}}", "0".repeat(MAX_TOKEN + 1)),
            format!("{{\"a\":{}}}", "e".repeat(MAX_TOKEN + 1)),
        ] {
            let e = limited(long.as_bytes()).unwrap_err();
            assert!(e.to_string().contains("token longer than"), "{e}");
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_document_is_parsed_as_it_downloads_into_what_is_kept() {
        #[derive(serde::Deserialize, Debug, PartialEq)]
        struct Kept {
            #[serde(rename = "LSN")]
            lsn: u64,
        }
        let dir = tempfile::tempdir().unwrap();
        let store = crate::backup::store::DirStore::new(dir.path().to_path_buf());
        let key = Key::new("doc.json");
        store
            .put(
                &key,
                bytes::Bytes::from_static(br#"{"Files":{"/a":{"IsSkipped":true}},"LSN":42}"#),
            )
            .await
            .unwrap();
        assert_eq!(
            read_streamed::<Kept>(&store, &key).await.unwrap(),
            Kept { lsn: 42 }
        );
        store
            .put(&key, bytes::Bytes::from_static(br#"{"LSN":"x"}"#))
            .await
            .unwrap();
        let e = read_streamed::<Kept>(&store, &key).await.unwrap_err();
        assert!(
            matches!(&e, BackupError::Corrupt { key: k, .. } if *k == key),
            "{e:?}"
        );
    }
}
