//! OpenPGP encryption (`WALG_PGP_KEY*`): keys, the streaming reader, and
//! the writer that runs rPGP on a thread of its own.

use super::*;

/// An OpenPGP key: the subkey objects are encrypted to and, when a private
/// key is configured, what decrypts them.
pub struct PgpKey {
    /// Where the key came from, for messages.
    pub(super) origin: String,
    pub(super) recipient: SignedPublicSubKey,
    pub(super) secret: Option<PgpSecret>,
}

pub(super) struct PgpSecret {
    pub(super) locked: SignedSecretKey,
    pub(super) passphrase: Option<Secret>,
    /// The key with its passphrase protection removed, on first use.
    pub(super) unlocked: OnceLock<SignedSecretKey>,
}

pub(super) fn hex_id(id: KeyId) -> String {
    hex::encode_upper(id.as_ref())
}

impl PgpKey {
    pub(super) fn parse(
        text: &Secret,
        origin: &str,
        passphrase: Option<Secret>,
    ) -> Result<PgpKey, CryptoError> {
        let bad = |detail: String| CryptoError::BadKey {
            origin: origin.to_string(),
            detail,
        };
        let text = text.expose();
        let parsed = Any::from_armor(text.as_bytes()).map_err(|e| {
            let hint = if text.lines().count() <= 1 {
                " (the value is a single line: an env directory keeps only the first line of a file, so give a key file in WALG_PGP_KEY_PATH, or write the key on one line with \\n escapes)"
            } else {
                ""
            };
            bad(format!("not an armored OpenPGP key: {e}{hint}"))
        })?;
        let (public, secret) = match parsed.0 {
            Any::PublicKey(k) => (k, None),
            Any::SecretKey(k) => (k.to_public_key(), Some(k)),
            _ => return Err(bad("expected an armored public or private key block".into())),
        };
        let recipient = public
            .public_subkeys
            .iter()
            .rev()
            .find(|s| {
                s.signatures.iter().any(|sig| {
                    let flags = sig.key_flags();
                    flags.encrypt_comms() || flags.encrypt_storage()
                })
            })
            .cloned()
            .ok_or_else(|| bad("the key has no encryption subkey".into()))?;
        Ok(PgpKey {
            origin: origin.to_string(),
            recipient,
            secret: secret.map(|locked| PgpSecret {
                locked,
                passphrase,
                unlocked: OnceLock::new(),
            }),
        })
    }

    /// Opens an OpenPGP message for streaming decryption.
    pub(super) fn open<R: Read + Send + 'static>(
        &self,
        key: &Key,
        inner: R,
    ) -> Result<PgpReader, CryptoError> {
        let corrupt = |detail: String| CryptoError::Corrupt {
            key: key.clone(),
            detail,
        };
        let secret = self
            .secret
            .as_ref()
            .ok_or_else(|| CryptoError::PublicKeyOnly {
                key: key.clone(),
                origin: self.origin.clone(),
            })?;
        let failure = Arc::new(Mutex::new(None));
        let source = BufReader::new(Recorder {
            inner,
            failure: Arc::clone(&failure),
        });
        let message = Message::from_bytes(source).map_err(|e| match take_failure(&failure) {
            Some(source) => CryptoError::Read {
                key: key.clone(),
                source,
            },
            None => corrupt(format!("bad OpenPGP message: {e}")),
        })?;
        if let Message::Encrypted { esk, .. } = &message {
            // Only subkeys decrypt (see `PgpKey::parse`).
            let ours: Vec<KeyId> = secret
                .locked
                .secret_subkeys
                .iter()
                .map(|s| s.key.legacy_key_id())
                .collect();
            let recipients: Vec<KeyId> = esk
                .iter()
                .filter_map(|e| match e {
                    Esk::PublicKeyEncryptedSessionKey(p) => p.id().ok().copied(),
                    Esk::SymKeyEncryptedSessionKey(_) => None,
                })
                .collect();
            let anonymous = recipients.iter().any(|id| id.as_ref() == [0u8; 8]);
            if !anonymous && !recipients.iter().any(|r| ours.contains(r)) {
                return Err(CryptoError::WrongPgpKey {
                    key: key.clone(),
                    recipients: if recipients.is_empty() {
                        "(none: a passphrase-encrypted message)".to_string()
                    } else {
                        recipients
                            .into_iter()
                            .map(hex_id)
                            .collect::<Vec<_>>()
                            .join(", ")
                    },
                    origin: self.origin.clone(),
                    ours: ours.into_iter().map(hex_id).collect::<Vec<_>>().join(", "),
                });
            }
        }
        let unlocked = secret.unlocked(&self.origin)?;
        let no_password = Password::empty();
        let ring = TheRing {
            secret_keys: vec![unlocked],
            key_passwords: vec![&no_password],
            // Bounded memory for parts of any size; the MDC is checked at
            // the end of the object and the codec checks the plaintext.
            decrypt_options: DecryptionOptions::new()
                .set_seipdv1_read_mode(Seipdv1ReadMode::Streaming),
            ..Default::default()
        };
        let (message, _) = message
            .decrypt_the_ring(ring, true)
            .map_err(|e| corrupt(format!("cannot decrypt the OpenPGP session key: {e}")))?;
        // gpg compresses before it encrypts unless told not to.
        let mut message = message;
        while message.is_compressed() {
            message = message.decompress().map_err(|e| {
                let said = e.to_string();
                match said.split_once("unsupported compression algorithm ") {
                    Some((_, algorithm)) => CryptoError::PgpCompression {
                        key: key.clone(),
                        algorithm: algorithm.trim().to_string(),
                    },
                    None => corrupt(format!("bad compressed OpenPGP data: {said}")),
                }
            })?;
        }
        Ok(PgpReader { message, failure })
    }
}

impl PgpSecret {
    /// The private key without passphrase protection; unlocking costs the
    /// key's S2K work once per process.
    pub(super) fn unlocked(&self, origin: &str) -> Result<&SignedSecretKey, CryptoError> {
        if let Some(k) = self.unlocked.get() {
            return Ok(k);
        }
        let mut key = self.locked.clone();
        let locked = key
            .secret_subkeys
            .iter()
            .any(|s| s.key.secret_params().is_encrypted());
        if locked {
            let passphrase =
                self.passphrase
                    .as_ref()
                    .ok_or_else(|| CryptoError::PassphraseMissing {
                        origin: origin.to_string(),
                    })?;
            let password = Password::from(passphrase.expose());
            let wrong = |_| CryptoError::WrongPassphrase {
                origin: origin.to_string(),
            };
            // Only the subkeys decrypt; the primary key stays locked.
            for s in &mut key.secret_subkeys {
                s.key.remove_password(&password).map_err(wrong)?;
            }
        }
        Ok(self.unlocked.get_or_init(|| key))
    }
}

/// Passes reads through and keeps the first error of the underlying
/// reader, so that a storage failure is reported as such rather than as a
/// decryption failure.
pub(super) struct Recorder<R> {
    inner: R,
    failure: Arc<Mutex<Option<io::Error>>>,
}

impl<R> fmt::Debug for Recorder<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Recorder")
    }
}

impl<R: Read> Read for Recorder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            // rPGP gets a copy; the original (which may carry a storage
            // error) is kept for the caller.
            let copy = io::Error::new(e.kind(), e.to_string());
            let mut slot = self.failure.lock().unwrap_or_else(|p| p.into_inner());
            slot.get_or_insert(e);
            copy
        })
    }
}

pub(super) fn take_failure(failure: &Mutex<Option<io::Error>>) -> Option<io::Error> {
    failure.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// The plaintext of an OpenPGP message.
pub(super) struct PgpReader {
    message: Message<'static>,
    failure: Arc<Mutex<Option<io::Error>>>,
}

impl Read for PgpReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.message.read(buf).map_err(|e| {
            take_failure(&self.failure).unwrap_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("OpenPGP decryption failed (modified or truncated object): {e}"),
                )
            })
        })
    }
}

/// Bytes handed to the OpenPGP encryption thread at a time.
pub(super) const PIPE_CHUNK: usize = 64 * 1024;

/// rPGP encrypts from a reader: it runs on a thread of its own, fed
/// through a small bounded channel (bounded memory, any object size). An
/// empty chunk marks the end; a closed channel without it aborts the
/// message, so a writer dropped on error never completes an object.
pub(super) struct PgpWriter<W> {
    tx: SyncSender<Vec<u8>>,
    buf: Vec<u8>,
    worker: Option<JoinHandle<io::Result<W>>>,
}

impl<W: Write + Send + 'static> PgpWriter<W> {
    pub(super) fn start(recipient: SignedPublicSubKey, mut inner: W) -> io::Result<PgpWriter<W>> {
        let (tx, rx) = sync_channel(2);
        let worker = std::thread::Builder::new()
            .name("pgp-encrypt".into())
            .spawn(move || {
                let source = ChannelReader {
                    rx,
                    chunk: Vec::new(),
                    pos: 0,
                    ended: false,
                };
                let mut builder = MessageBuilder::from_reader("", source)
                    .seipd_v1(OsRng, SymmetricKeyAlgorithm::AES256);
                builder
                    .encrypt_to_key(OsRng, &recipient)
                    .map_err(io::Error::other)?;
                builder
                    .to_writer(OsRng, &mut inner)
                    .map_err(io::Error::other)?;
                inner.flush()?;
                Ok(inner)
            })?;
        Ok(PgpWriter {
            tx,
            buf: Vec::with_capacity(PIPE_CHUNK),
            worker: Some(worker),
        })
    }
}

impl<W> PgpWriter<W> {
    pub(super) fn send(&mut self, chunk: Vec<u8>) -> io::Result<()> {
        if self.tx.send(chunk).is_ok() {
            return Ok(());
        }
        // The thread stopped early: report its error.
        Err(match self.worker.take().map(JoinHandle::join) {
            Some(Ok(Err(e))) => e,
            _ => io::Error::new(io::ErrorKind::BrokenPipe, "OpenPGP encryption stopped"),
        })
    }

    pub(super) fn finish(mut self) -> io::Result<W> {
        if !self.buf.is_empty() {
            let chunk = std::mem::take(&mut self.buf);
            self.send(chunk)?;
        }
        self.send(Vec::new())?;
        match self.worker.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            _ => Err(io::Error::other("OpenPGP encryption thread failed")),
        }
    }
}

impl<W> Write for PgpWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= PIPE_CHUNK {
            let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(PIPE_CHUNK));
            self.send(chunk)?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The encryption thread's input.
pub(super) struct ChannelReader {
    rx: Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    pos: usize,
    ended: bool,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() && !self.ended {
            match self.rx.recv() {
                Ok(chunk) if chunk.is_empty() => self.ended = true,
                Ok(chunk) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "object writer dropped before the end",
                    ))
                }
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
