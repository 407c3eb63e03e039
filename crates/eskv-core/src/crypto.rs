//! Crypto-shredding of personal data.
//!
//! The personal part of an event ([`PersonalData`]) is encrypted with a
//! key of its data subject; that key is stored wrapped (encrypted) under
//! the application's [`StoreKey`], one record per subject
//! (`layout::subject_key`). [`EventStore::forget`] destroys the record, so
//! the ciphertext left in the log can never be read again: readers get the
//! event with its personal part marked erased.
//!
//! All encryption is XChaCha20-Poly1305 from RustCrypto's
//! `chacha20poly1305` (an authenticated cipher with 24-byte random
//! nonces, safe to draw at random for every message). Associated data
//! binds each ciphertext to where it belongs: a subject key to its subject
//! and generation, a personal part to its event id, subject and
//! generation, so no ciphertext can be moved to another event or subject.
//!
//! [`PersonalData`]: crate::PersonalData
//! [`EventStore::forget`]: crate::EventStore::forget

use crate::error::{Error, Result};
use crate::event::SealedPersonal;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use ulid::Ulid;

/// The application's key for the personal data of a store: 32 bytes,
/// kept outside the store (a secrets manager, an environment variable).
/// Every subject key is stored encrypted under it. Losing it makes every
/// personal part unreadable; a wrong one is refused at open
/// ([`Error::WrongStoreKey`]).
#[derive(Clone)]
pub struct StoreKey(Key);

impl StoreKey {
    /// The key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        StoreKey(Key::from(bytes))
    }

    /// A fresh random key (from the operating system's generator).
    pub fn generate() -> Self {
        StoreKey(XChaCha20Poly1305::generate_key(&mut OsRng))
    }

    /// The key's bytes, to keep it somewhere safe.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.into()
    }

    /// The key from 64 hexadecimal digits (either case; surrounding white
    /// space ignored): the text the CLI's `--store-key` and
    /// `ESKV_STORE_KEY` take, so a program and the CLI share one key.
    /// Anything else is [`Error::InvalidInput`], which never shows the text.
    ///
    /// ```
    /// let key = eskv_core::StoreKey::generate();
    /// let text = key.to_hex();
    /// assert_eq!(text.len(), 64);
    /// assert_eq!(eskv_core::StoreKey::from_hex(&text).unwrap().to_bytes(), key.to_bytes());
    /// assert!(eskv_core::StoreKey::from_hex("abc").is_err());
    /// ```
    pub fn from_hex(hex: &str) -> Result<Self> {
        let hex = hex.trim();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::invalid(format!(
                "a store key is 64 hexadecimal digits (32 bytes); this one has {} characters",
                hex.chars().count()
            )));
        }
        let mut bytes = [0u8; 32];
        for (i, b) in bytes.iter_mut().enumerate() {
            // Checked above: two ASCII hex digits.
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or_default();
        }
        Ok(StoreKey::from_bytes(bytes))
    }

    /// The key as 64 lowercase hexadecimal digits ([`from_hex`](Self::from_hex)).
    pub fn to_hex(&self) -> String {
        self.to_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&self.0)
    }
}

impl std::fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreKey(<redacted>)")
    }
}

const CHECK_TEXT: &[u8] = b"eskv store key check v1";

fn seal_with(cipher: &XChaCha20Poly1305, msg: &[u8], aad: &[u8]) -> ([u8; 24], Vec<u8>) {
    let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
    // Encryption fails only for messages beyond 2^38 bytes.
    let ct = cipher
        .encrypt(&nonce, Payload { msg, aad })
        .unwrap_or_default();
    (nonce.into(), ct)
}

fn open_with(
    cipher: &XChaCha20Poly1305,
    nonce: &[u8; 24],
    ct: &[u8],
    aad: &[u8],
) -> Option<Vec<u8>> {
    cipher
        .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad })
        .ok()
}

/// A sealed known text, stored at `layout::store_key_check_key`.
pub(crate) fn check_value(key: &StoreKey) -> Vec<u8> {
    let (nonce, ct) = seal_with(&key.cipher(), CHECK_TEXT, b"eskv-store-key-check");
    let mut v = nonce.to_vec();
    v.extend_from_slice(&ct);
    v
}

/// Checks `key` against the stored check value.
pub(crate) fn check_key(key: &StoreKey, stored: &[u8]) -> Result<()> {
    let ok = stored.len() > 24 && {
        let mut nonce = [0u8; 24];
        nonce.copy_from_slice(&stored[..24]);
        open_with(
            &key.cipher(),
            &nonce,
            &stored[24..],
            b"eskv-store-key-check",
        )
        .as_deref()
            == Some(CHECK_TEXT)
    };
    if ok {
        Ok(())
    } else {
        Err(Error::WrongStoreKey {
            message: "the store key given in EventStoreOptions::store_key is not the key this store's personal data was written with".into(),
        })
    }
}

/// A subject's key record: the generation of its current key and the key
/// wrapped under the store key, or `None` once forgotten.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SubjectRecord {
    pub generation: u64,
    pub wrapped: Option<([u8; 24], Vec<u8>)>,
}

impl SubjectRecord {
    pub(crate) fn decode(v: &[u8]) -> Result<Self> {
        postcard::from_bytes(v)
            .map_err(|e| Error::corrupt(None, format!("subject key record does not decode: {e}")))
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }
}

/// A subject's data key, unwrapped.
#[derive(Clone)]
pub(crate) struct SubjectKey {
    pub generation: u64,
    key: Key,
}

fn wrap_aad(subject: &str, generation: u64) -> Vec<u8> {
    let mut aad = b"eskv-subject-key\0".to_vec();
    aad.extend_from_slice(&generation.to_be_bytes());
    aad.extend_from_slice(subject.as_bytes());
    aad
}

/// A fresh key for `subject`, and its record.
pub(crate) fn new_subject_key(
    store: &StoreKey,
    subject: &str,
    generation: u64,
) -> (SubjectKey, SubjectRecord) {
    let key = XChaCha20Poly1305::generate_key(&mut OsRng);
    let wrapped = seal_with(&store.cipher(), &key, &wrap_aad(subject, generation));
    (
        SubjectKey { generation, key },
        SubjectRecord {
            generation,
            wrapped: Some(wrapped),
        },
    )
}

/// The subject's current key, `None` when forgotten.
pub(crate) fn unwrap_subject_key(
    store: &StoreKey,
    subject: &str,
    rec: &SubjectRecord,
) -> Result<Option<SubjectKey>> {
    let Some((nonce, ct)) = &rec.wrapped else {
        return Ok(None);
    };
    let raw = open_with(&store.cipher(), nonce, ct, &wrap_aad(subject, rec.generation))
        .filter(|k| k.len() == 32)
        .ok_or_else(|| Error::WrongStoreKey {
            message: format!(
                "the key of data subject '{subject}' does not open with the store key given in EventStoreOptions::store_key"
            ),
        })?;
    Ok(Some(SubjectKey {
        generation: rec.generation,
        key: *Key::from_slice(&raw),
    }))
}

fn part_aad(id: Ulid, subject: &str, generation: u64) -> Vec<u8> {
    let mut aad = b"eskv-personal\0".to_vec();
    aad.extend_from_slice(&id.0.to_be_bytes());
    aad.extend_from_slice(&generation.to_be_bytes());
    aad.extend_from_slice(subject.as_bytes());
    aad
}

/// Encrypts the personal part of event `id`.
pub(crate) fn seal_part(key: &SubjectKey, id: Ulid, subject: &str, plain: &[u8]) -> SealedPersonal {
    let cipher = XChaCha20Poly1305::new(&key.key);
    let (nonce, ciphertext) = seal_with(&cipher, plain, &part_aad(id, subject, key.generation));
    SealedPersonal {
        generation: key.generation,
        nonce,
        ciphertext,
    }
}

/// Decrypts the personal part of event `id`; a part that does not open
/// under its subject's key is damage.
pub(crate) fn open_part(
    key: &SubjectKey,
    id: Ulid,
    subject: &str,
    sealed: &SealedPersonal,
) -> Result<Vec<u8>> {
    let cipher = XChaCha20Poly1305::new(&key.key);
    open_with(
        &cipher,
        &sealed.nonce,
        &sealed.ciphertext,
        &part_aad(id, subject, sealed.generation),
    )
    .ok_or_else(|| {
        Error::corrupt(
            None,
            format!("the personal part of event {id} (subject '{subject}') fails its authentication tag"),
        )
    })
}

/// A data subject's key record as the store holds it: the key wrapped
/// (encrypted) under the store key, never in clear, or only its
/// generation once the subject was forgotten. Backups carry these
/// ([`EventStore::subject_keys`], [`EventStore::import_subject_keys`]), so
/// a restore opened with the same store key reads the personal data, and
/// `forget` still shreds it there.
///
/// [`EventStore::subject_keys`]: crate::EventStore::subject_keys
/// [`EventStore::import_subject_keys`]: crate::EventStore::import_subject_keys
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedSubjectKey {
    subject: String,
    pub(crate) record: SubjectRecord,
}

impl std::fmt::Debug for WrappedSubjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WrappedSubjectKey")
            .field("subject", &self.subject)
            .field("generation", &self.record.generation)
            .field("forgotten", &self.is_forgotten())
            .finish()
    }
}

impl WrappedSubjectKey {
    /// A live key: `wrapped` (ciphertext and tag) sealed with `nonce` under
    /// the store key, as [`wrapped`](Self::wrapped) returns them.
    pub fn new(
        subject: impl Into<String>,
        generation: u64,
        nonce: [u8; 24],
        wrapped: Vec<u8>,
    ) -> Self {
        WrappedSubjectKey {
            subject: subject.into(),
            record: SubjectRecord {
                generation,
                wrapped: Some((nonce, wrapped)),
            },
        }
    }

    /// A forgotten subject: only the generation of its last key is left.
    pub fn forgotten(subject: impl Into<String>, generation: u64) -> Self {
        WrappedSubjectKey {
            subject: subject.into(),
            record: SubjectRecord {
                generation,
                wrapped: None,
            },
        }
    }

    pub(crate) fn from_record(subject: String, record: SubjectRecord) -> Self {
        WrappedSubjectKey { subject, record }
    }

    /// The data subject.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The generation of the subject's current (or last) key.
    pub fn generation(&self) -> u64 {
        self.record.generation
    }

    /// True when the subject was forgotten: no key is left.
    pub fn is_forgotten(&self) -> bool {
        self.record.wrapped.is_none()
    }

    /// The nonce and the wrapped key (ciphertext and tag), `None` when
    /// forgotten.
    pub fn wrapped(&self) -> Option<(&[u8; 24], &[u8])> {
        self.record.wrapped.as_ref().map(|(n, c)| (n, c.as_slice()))
    }

    /// Checks that the key opens under `store_key`
    /// ([`Error::WrongStoreKey`] otherwise); a forgotten one always passes.
    pub fn check(&self, store_key: &StoreKey) -> Result<()> {
        unwrap_subject_key(store_key, &self.subject, &self.record).map(|_| ())
    }

    /// The same key wrapped under `to` instead of `from` (for a copy into
    /// a store with another store key); the key is in clear only inside
    /// this call. [`Error::WrongStoreKey`] when it does not open with
    /// `from`; a forgotten subject stays forgotten.
    pub fn rewrap(&self, from: &StoreKey, to: &StoreKey) -> Result<Self> {
        let Some(key) = unwrap_subject_key(from, &self.subject, &self.record)? else {
            return Ok(self.clone());
        };
        let wrapped = seal_with(
            &to.cipher(),
            &key.key,
            &wrap_aad(&self.subject, key.generation),
        );
        Ok(WrappedSubjectKey {
            subject: self.subject.clone(),
            record: SubjectRecord {
                generation: key.generation,
                wrapped: Some(wrapped),
            },
        })
    }
}
