//! Optional payload encryption: an AES-256-GCM [`PayloadCodec`], so Temporal stores no image
//! URL, title or result in clear text.
//!
//! Keys live in a directory (a mounted Secret): one file per key, named by its key id, holding
//! 32 bytes in base64. New payloads are encrypted with the current key id; each payload names
//! the key it was encrypted with, so after a rotation (add a key, make it current) workflows
//! started before still decode. A key added to the directory later is found when a payload
//! names it.
//!
//! The format is the one of Temporal's encryption samples: `encoding: binary/encrypted`,
//! `encryption-key-id: <id>`, and as data the 12-byte nonce followed by the ciphertext of the
//! original payload (protobuf-encoded), with the key id as GCM's associated data: a ciphertext
//! relabelled with another key id does not decrypt. Payloads written before that binding (no
//! associated data) still decrypt.
//!
//! A payload naming a key not held sends the codec to the directory again, at most once per
//! [`KEY_REREAD_EVERY`] (a flood of bogus key ids costs one read, not one per payload); keys
//! read are added to those held, never replace them, so the current key (and any other) stays
//! however the directory changes until the process restarts. A payload met by decrypt that is
//! not encrypted passes through unchanged: workflows started before encryption was turned on
//! still decode.

use aes_gcm::aead::Payload as Sealed;
use aes_gcm::{
    Aes256Gcm, Key, Nonce,
    aead::{Aead, AeadCore, KeyInit, OsRng},
};
use base64::{Engine, engine::general_purpose::STANDARD};
use futures::{FutureExt, future::BoxFuture};
use prost::Message;
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};
use temporalio_common::{
    data_converters::{
        DataConverter, DefaultFailureConverter, PayloadCodec, PayloadConversionError,
        PayloadConverter, SerializationContextData,
    },
    protos::temporal::api::common::v1::Payload,
};

/// `encoding` of an encrypted payload.
pub const ENCRYPTED_ENCODING: &[u8] = b"binary/encrypted";
/// Metadata key naming the key a payload was encrypted with.
pub const KEY_ID_METADATA: &str = "encryption-key-id";
const NONCE_LEN: usize = 12;
/// Least time between two reads of the key directory for a key id not held.
pub const KEY_REREAD_EVERY: Duration = Duration::from_secs(10);

/// Why the codec cannot be set up or a payload cannot be decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The key directory cannot be read.
    #[error("cannot read the payload keys in {path}: {source}")]
    Keys {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A key file does not hold 32 bytes of base64.
    #[error("payload key {0:?} is not 32 bytes of base64")]
    BadKey(String),
    /// The current key id has no key file.
    #[error("payload key {0:?} (the current key id) is not in the key directory")]
    MissingCurrentKey(String),
    /// A payload names a key that is nowhere.
    #[error("payload encrypted with unknown key {0:?}")]
    UnknownKey(String),
    /// A payload does not decrypt (wrong key, or tampered with).
    #[error("payload does not decrypt with key {0:?}")]
    Decrypt(String),
    /// The decrypted bytes are not a payload.
    #[error("decrypted payload is malformed: {0}")]
    Malformed(String),
}

/// AES-256-GCM payload encryption with rotating keys.
#[derive(Clone)]
pub struct PayloadCipher {
    dir: PathBuf,
    current: String,
    keys: Arc<RwLock<HashMap<String, Aes256Gcm>>>,
    /// When the directory was last read for an unknown key id.
    reread: Arc<Mutex<Option<Instant>>>,
}

fn read_keys(dir: &Path) -> Result<HashMap<String, Aes256Gcm>, CodecError> {
    let io = |source| CodecError::Keys {
        path: dir.to_owned(),
        source,
    };
    let mut keys = HashMap::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let id = entry.file_name().to_string_lossy().into_owned();
        // Kubernetes Secret volumes hold `..data` links and dot-directories beside the keys.
        if id.starts_with('.') || !entry.path().is_file() {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).map_err(io)?;
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|_| CodecError::BadKey(id.clone()))?;
        if bytes.len() != 32 {
            return Err(CodecError::BadKey(id));
        }
        keys.insert(id, Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&bytes)));
    }
    Ok(keys)
}

impl PayloadCipher {
    /// Loads the keys of `dir`; new payloads are encrypted with `current`.
    pub fn load(dir: PathBuf, current: String) -> Result<Self, CodecError> {
        let keys = read_keys(&dir)?;
        if !keys.contains_key(&current) {
            return Err(CodecError::MissingCurrentKey(current));
        }
        Ok(Self {
            dir,
            current,
            keys: Arc::new(RwLock::new(keys)),
            reread: Arc::default(),
        })
    }

    /// The key id new payloads are encrypted with.
    pub fn current_key(&self) -> &str {
        &self.current
    }

    /// A data converter that encrypts every payload, and failure messages with them.
    pub fn data_converter(&self) -> DataConverter {
        DataConverter::new(
            PayloadConverter::default(),
            DefaultFailureConverter::new(true),
            self.clone(),
        )
    }

    /// Encrypts one payload with the current key.
    pub fn encrypt(&self, payload: &Payload) -> Result<Payload, CodecError> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let cipher = keys
            .get(&self.current)
            .ok_or_else(|| CodecError::MissingCurrentKey(self.current.clone()))?;
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let plain = payload.encode_to_vec();
        let sealed = cipher
            .encrypt(
                &nonce,
                Sealed {
                    msg: &plain,
                    aad: self.current.as_bytes(),
                },
            )
            .map_err(|_| CodecError::Decrypt(self.current.clone()))?;
        let mut data = nonce.to_vec();
        data.extend_from_slice(&sealed);
        Ok(Payload {
            metadata: HashMap::from([
                ("encoding".to_owned(), ENCRYPTED_ENCODING.to_vec()),
                (KEY_ID_METADATA.to_owned(), self.current.as_bytes().to_vec()),
            ]),
            data,
            ..Default::default()
        })
    }

    /// Decrypts one payload; one that is not encrypted passes through unchanged.
    pub fn decrypt(&self, payload: Payload) -> Result<Payload, CodecError> {
        if payload.metadata.get("encoding").map(Vec::as_slice) != Some(ENCRYPTED_ENCODING) {
            return Ok(payload);
        }
        let id = payload
            .metadata
            .get(KEY_ID_METADATA)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        if !self.knows(&id)
            && let Err(e) = self.read_new_keys()
        {
            // The keys held stay; the error (which names the key directory) goes to the log
            // only, and the payload is answered as one of an unknown key.
            tracing::warn!(error = %e, "the payload key directory cannot be read again");
        }
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let cipher = keys
            .get(&id)
            .ok_or_else(|| CodecError::UnknownKey(id.clone()))?;
        if payload.data.len() < NONCE_LEN {
            return Err(CodecError::Decrypt(id));
        }
        let (nonce, sealed) = payload.data.split_at(NONCE_LEN);
        let nonce = Nonce::from_slice(nonce);
        let bound = Sealed {
            msg: sealed,
            aad: id.as_bytes(),
        };
        let plain = cipher
            .decrypt(nonce, bound)
            // Written before the key id was bound to the ciphertext.
            .or_else(|_| cipher.decrypt(nonce, sealed))
            .map_err(|_| CodecError::Decrypt(id))?;
        Payload::decode(plain.as_slice()).map_err(|e| CodecError::Malformed(e.to_string()))
    }

    /// Reads the directory for keys added since (a rotation), at most once per
    /// [`KEY_REREAD_EVERY`], adding them to those held.
    fn read_new_keys(&self) -> Result<(), CodecError> {
        {
            let mut last = self.reread.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|at| at.elapsed() < KEY_REREAD_EVERY) {
                return Ok(());
            }
            *last = Some(Instant::now());
        }
        let fresh = read_keys(&self.dir)?;
        let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
        for (id, key) in fresh {
            keys.entry(id).or_insert(key);
        }
        Ok(())
    }

    fn knows(&self, id: &str) -> bool {
        self.keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(id)
    }

    fn apply(
        &self,
        payloads: Vec<Payload>,
        step: fn(&Self, Payload) -> Result<Payload, CodecError>,
    ) -> BoxFuture<'static, Result<Vec<Payload>, PayloadConversionError>> {
        let result = payloads
            .into_iter()
            .map(|p| step(self, p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| PayloadConversionError::EncodingError(Box::new(e)));
        async move { result }.boxed()
    }
}

impl PayloadCodec for PayloadCipher {
    fn encode(
        &self,
        _context: &SerializationContextData,
        payloads: Vec<Payload>,
    ) -> BoxFuture<'static, Result<Vec<Payload>, PayloadConversionError>> {
        self.apply(payloads, |cipher, payload| cipher.encrypt(&payload))
    }

    fn decode(
        &self,
        _context: &SerializationContextData,
        payloads: Vec<Payload>,
    ) -> BoxFuture<'static, Result<Vec<Payload>, PayloadConversionError>> {
        self.apply(payloads, Self::decrypt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_dir(keys: &[(&str, [u8; 32])]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        for (id, key) in keys {
            std::fs::write(dir.path().join(id), STANDARD.encode(key)).expect("write key");
        }
        dir
    }

    fn json(text: &str) -> Payload {
        Payload {
            metadata: HashMap::from([("encoding".to_owned(), b"json/plain".to_vec())]),
            data: text.as_bytes().to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn a_payload_round_trips_and_its_text_is_not_in_the_ciphertext() {
        let dir = key_dir(&[("k1", [7; 32])]);
        let cipher = PayloadCipher::load(dir.path().into(), "k1".into()).expect("keys");
        let plain = json(r#"{"url":"https://example.com/secret.jpg"}"#);
        let sealed = cipher.encrypt(&plain).expect("encrypt");
        assert_eq!(sealed.metadata["encoding"], ENCRYPTED_ENCODING);
        assert_eq!(sealed.metadata[KEY_ID_METADATA], b"k1");
        assert!(!String::from_utf8_lossy(&sealed.data).contains("example.com"));
        assert_eq!(cipher.decrypt(sealed).expect("decrypt"), plain);
        let unencrypted = json("1");
        assert_eq!(
            cipher.decrypt(unencrypted.clone()).expect("pass"),
            unencrypted
        );
    }

    #[test]
    fn after_a_rotation_old_payloads_decode_and_a_later_key_is_found() {
        let dir = key_dir(&[("old", [1; 32])]);
        let before = PayloadCipher::load(dir.path().into(), "old".into()).expect("keys");
        let sealed_old = before.encrypt(&json("\"old\"")).expect("encrypt");
        std::fs::write(dir.path().join("new"), STANDARD.encode([2u8; 32])).expect("key");
        let after = PayloadCipher::load(dir.path().into(), "new".into()).expect("keys");
        let sealed_new = after.encrypt(&json("\"new\"")).expect("encrypt");
        assert_eq!(after.decrypt(sealed_old).expect("old").data, b"\"old\"");
        // The process that started before the new key existed still reads new payloads.
        assert_eq!(before.decrypt(sealed_new).expect("new").data, b"\"new\"");
    }

    #[test]
    fn a_flood_of_unknown_key_ids_reads_the_directory_once_and_loses_no_key() {
        let dir = key_dir(&[("k1", [7; 32])]);
        let cipher = PayloadCipher::load(dir.path().into(), "k1".into()).expect("keys");
        let old = cipher.encrypt(&json("\"old\"")).expect("encrypt");
        // The Secret loses every key, the current one too; then bogus payloads arrive.
        std::fs::remove_file(dir.path().join("k1")).expect("remove");
        let mut bogus = old.clone();
        bogus
            .metadata
            .insert(KEY_ID_METADATA.into(), b"bogus-1".to_vec());
        assert!(matches!(
            cipher.decrypt(bogus.clone()),
            Err(CodecError::UnknownKey(_))
        ));
        // A key added now is not read until the re-read interval passed: the flood costs one.
        std::fs::write(dir.path().join("k2"), STANDARD.encode([9u8; 32])).expect("key");
        let mut later = old.clone();
        later
            .metadata
            .insert(KEY_ID_METADATA.into(), b"k2".to_vec());
        for _ in 0..1000 {
            assert!(matches!(
                cipher.decrypt(bogus.clone()),
                Err(CodecError::UnknownKey(_))
            ));
        }
        assert!(matches!(
            cipher.decrypt(later),
            Err(CodecError::UnknownKey(_))
        ));
        // Nothing held was lost: new payloads still encrypt, old ones still decrypt.
        assert_eq!(cipher.decrypt(old).expect("old").data, b"\"old\"");
        let new = cipher
            .encrypt(&json("\"new\""))
            .expect("the current key is kept");
        assert_eq!(cipher.decrypt(new).expect("new").data, b"\"new\"");
    }

    #[test]
    fn a_key_directory_gone_is_told_as_an_unknown_key_without_its_path() {
        let dir = key_dir(&[("k1", [7; 32])]);
        let cipher = PayloadCipher::load(dir.path().into(), "k1".into()).expect("keys");
        let mut stranger = cipher.encrypt(&json("1")).expect("encrypt");
        stranger
            .metadata
            .insert(KEY_ID_METADATA.into(), b"k9".to_vec());
        let path = dir.path().display().to_string();
        drop(dir);
        let told = cipher
            .decrypt(stranger)
            .expect_err("unknown key")
            .to_string();
        assert_eq!(told, r#"payload encrypted with unknown key "k9""#);
        assert!(!told.contains(&path));
        assert!(cipher.encrypt(&json("2")).is_ok(), "the keys held stay");
    }

    #[test]
    fn a_ciphertext_is_bound_to_its_key_id_and_unbound_old_ones_still_decrypt() {
        // Two ids holding the same bytes: relabelling a payload must still fail.
        let dir = key_dir(&[("a", [5; 32]), ("b", [5; 32])]);
        let cipher = PayloadCipher::load(dir.path().into(), "a".into()).expect("keys");
        let mut relabelled = cipher.encrypt(&json("1")).expect("encrypt");
        relabelled
            .metadata
            .insert(KEY_ID_METADATA.into(), b"b".to_vec());
        assert!(matches!(
            cipher.decrypt(relabelled),
            Err(CodecError::Decrypt(_))
        ));
        // A payload sealed before the binding (no associated data) decodes.
        let key = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&[5; 32]));
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let plain = json("\"legacy\"");
        let mut data = nonce.to_vec();
        data.extend(
            key.encrypt(&nonce, plain.encode_to_vec().as_slice())
                .expect("seal"),
        );
        let legacy = Payload {
            metadata: HashMap::from([
                ("encoding".to_owned(), ENCRYPTED_ENCODING.to_vec()),
                (KEY_ID_METADATA.to_owned(), b"a".to_vec()),
            ]),
            data,
            ..Default::default()
        };
        assert_eq!(cipher.decrypt(legacy).expect("legacy"), plain);
    }

    #[test]
    fn a_wrong_key_a_tampered_payload_and_bad_key_files_are_clear_errors() {
        let dir = key_dir(&[("k1", [7; 32])]);
        let cipher = PayloadCipher::load(dir.path().into(), "k1".into()).expect("keys");
        let mut sealed = cipher.encrypt(&json("1")).expect("encrypt");
        if let Some(last) = sealed.data.last_mut() {
            *last ^= 1;
        }
        assert!(matches!(
            cipher.decrypt(sealed),
            Err(CodecError::Decrypt(_))
        ));
        let mut foreign = cipher.encrypt(&json("1")).expect("encrypt");
        foreign
            .metadata
            .insert(KEY_ID_METADATA.into(), b"elsewhere".to_vec());
        assert!(matches!(
            cipher.decrypt(foreign),
            Err(CodecError::UnknownKey(id)) if id == "elsewhere"
        ));
        assert!(matches!(
            PayloadCipher::load(dir.path().into(), "absent".into()),
            Err(CodecError::MissingCurrentKey(_))
        ));
        std::fs::write(dir.path().join("short"), STANDARD.encode([0u8; 8])).expect("key");
        assert!(matches!(
            PayloadCipher::load(dir.path().into(), "k1".into()),
            Err(CodecError::BadKey(id)) if id == "short"
        ));
    }
}
