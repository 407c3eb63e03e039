//! The personal part of an event in the JSON-lines format (see the
//! [event format](super)): never its bytes in clear.
//!
//! - `{"subject":"user-1","sealed":{"generation":1,"nonce":"…","ciphertext":"…"}}`:
//!   the part as the store holds it (XChaCha20-Poly1305 under the
//!   subject's key, base64), written by export and archive;
//! - `{"subject":"user-1","erased":true}`: its subject was forgotten;
//! - `{"subject":"user-1"}`: an opened part (read with the key): the
//!   subject is named, the bytes are left out; it cannot be read back.

use crate::event::{PersonalData, SealedPersonal};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// The personal part of an event line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersonalLine {
    /// The data subject.
    pub subject: String,
    /// The part as stored, encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<SealedLine>,
    /// True when the subject was forgotten.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub erased: bool,
}

/// A sealed personal part: the key generation, and nonce and ciphertext
/// in standard base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedLine {
    /// Generation of the subject key it is sealed under.
    pub generation: u64,
    /// The 24-byte nonce, base64.
    pub nonce: String,
    /// Ciphertext and tag, base64.
    pub ciphertext: String,
}

impl PersonalLine {
    /// The line of a part: sealed or erased as it is; an opened part
    /// names its subject only (its bytes never go into a line).
    pub fn of(p: &PersonalData) -> PersonalLine {
        PersonalLine {
            subject: p.subject().to_owned(),
            sealed: p.sealed_part().map(|s| SealedLine {
                generation: s.generation,
                nonce: base64::engine::general_purpose::STANDARD.encode(s.nonce),
                ciphertext: base64::engine::general_purpose::STANDARD.encode(&s.ciphertext),
            }),
            erased: p.is_erased(),
        }
    }

    /// The part to import: sealed or erased. Fails for a line with
    /// neither or both, or bad base64.
    pub fn to_personal(&self) -> Result<PersonalData, String> {
        match (&self.sealed, self.erased) {
            (Some(s), false) => {
                let nonce: [u8; 24] = base64::engine::general_purpose::STANDARD
                    .decode(&s.nonce)
                    .ok()
                    .and_then(|n| n.try_into().ok())
                    .ok_or("personal.sealed.nonce is not 24 bytes in base64")?;
                let ciphertext = base64::engine::general_purpose::STANDARD
                    .decode(&s.ciphertext)
                    .map_err(|e| format!("personal.sealed.ciphertext is not valid base64: {e}"))?;
                Ok(PersonalData::sealed(
                    self.subject.clone(),
                    SealedPersonal {
                        generation: s.generation,
                        nonce,
                        ciphertext,
                    },
                ))
            }
            (None, true) => Ok(PersonalData::erased(self.subject.clone())),
            (Some(_), true) => Err("a personal part is either sealed or erased, not both".into()),
            (None, false) => Err(format!(
                "the personal part of subject '{}' has no content: an opened part is written as its subject only (by `read --json` and by serde), never in clear; import the output of `eskv export`, which keeps the part sealed",
                self.subject
            )),
        }
    }

    /// The subject alone: what a checksum that must not depend on a
    /// part's state (sealed here, erased after a forget there) covers.
    pub fn subject_only(&self) -> PersonalLine {
        PersonalLine {
            subject: self.subject.clone(),
            sealed: None,
            erased: false,
        }
    }
}
