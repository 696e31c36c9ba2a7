//! X25519 keys as WireGuard spells them: 32 bytes, shown as 44 characters
//! of standard base64.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use gotatun::x25519;

/// Why a key could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key is not valid base64: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error("key is {0} bytes long, want 32")]
    Length(usize),
    #[error("key is {0} characters long, want 44 (base64 of 32 bytes)")]
    TextLength(usize),
    #[error("reading key file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("key file {path}: {source}")]
    Malformed {
        path: PathBuf,
        source: Box<KeyError>,
    },
    #[error("writing key file {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("no randomness from the kernel: {0}")]
    Random(io::Error),
}

/// A peer's public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

/// A device's private key. Its Debug does not print the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKey([u8; 32]);

impl PublicKey {
    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        decode32(s).map(PublicKey)
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    pub(crate) fn from_x25519(k: &x25519::PublicKey) -> Self {
        PublicKey(*k.as_bytes())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl std::str::FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        Self::from_base64(s)
    }
}

impl PrivateKey {
    /// A fresh key from the kernel's CSPRNG, clamped as WireGuard's `wg
    /// genkey` does so that the file holds the canonical form.
    pub fn generate() -> Result<Self, KeyError> {
        let mut b = [0u8; 32];
        fill_random(&mut b).map_err(KeyError::Random)?;
        b[0] &= 248;
        b[31] &= 127;
        b[31] |= 64;
        Ok(PrivateKey(b))
    }

    pub fn from_bytes(b: [u8; 32]) -> Self {
        PrivateKey(b)
    }

    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        decode32(s).map(PrivateKey)
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey::from_x25519(&x25519::PublicKey::from(&self.to_x25519()))
    }

    pub(crate) fn to_x25519(&self) -> x25519::StaticSecret {
        x25519::StaticSecret::from(self.0)
    }

    /// Reads the key at `path`, or creates one there if the file does not
    /// exist. Creation is atomic (temporary file, fsync, rename, fsync of
    /// the directory), so a crash leaves either no key or a whole one, and
    /// two agents racing end up agreeing on whichever rename landed last.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        match fs::read_to_string(path) {
            Ok(text) => Self::from_base64(text.trim()).map_err(|e| KeyError::Malformed {
                path: path.to_path_buf(),
                source: Box::new(e),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let key = Self::generate()?;
                key.save(path).map_err(|source| KeyError::Write {
                    path: path.to_path_buf(),
                    source,
                })?;
                // Read back so that a concurrent creator's key, if its rename
                // won, is the one both of us use.
                Self::load(path)
            }
            Err(source) => Err(KeyError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_base64(text.trim()).map_err(|e| KeyError::Malformed {
            path: path.to_path_buf(),
            source: Box::new(e),
        })
    }

    /// Writes the key to `path` atomically, mode 0600 from creation.
    pub fn save(&self, path: &Path) -> io::Result<()> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        fs::create_dir_all(dir)?;
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
        let tmp = dir.join(format!(
            ".{}.tmp.{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        // A crash between create and rename leaves the temporary file; a
        // restart with the same pid (pid 1 in a container) must not trip
        // over it.
        let _ = fs::remove_file(&tmp);
        let result = (|| {
            // Mode at creation, so the secret is never readable by others,
            // not even between create and chmod.
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.set_permissions(fs::Permissions::from_mode(0o600))?;
            f.write_all(format!("{}\n", self.to_base64()).as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, path)?;
            fs::File::open(dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey(public {})", self.public_key())
    }
}

/// A private key and the public key derived from it.
#[derive(Clone, Debug)]
pub struct KeyPair {
    pub private: PrivateKey,
    pub public: PublicKey,
}

impl KeyPair {
    pub fn generate() -> Result<Self, KeyError> {
        Ok(Self::from_private(PrivateKey::generate()?))
    }

    pub fn from_private(private: PrivateKey) -> Self {
        let public = private.public_key();
        KeyPair { private, public }
    }
}

fn decode32(s: &str) -> Result<[u8; 32], KeyError> {
    let s = s.trim();
    // Length first: a 43- or 45-character string would otherwise report
    // a less helpful padding error.
    if s.len() != 44 {
        return Err(KeyError::TextLength(s.len()));
    }
    let v = STANDARD.decode(s)?;
    <[u8; 32]>::try_from(v.as_slice()).map_err(|_| KeyError::Length(v.len()))
}

fn fill_random(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`.
        let n = unsafe { libc::getrandom(buf[done..].as_mut_ptr().cast(), buf.len() - done, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip_is_44_chars() {
        let k = KeyPair::generate().unwrap();
        let s = k.public.to_base64();
        assert_eq!(s.len(), 44);
        assert!(s.ends_with('='));
        assert_eq!(PublicKey::from_base64(&s).unwrap(), k.public);
        assert_eq!(
            PrivateKey::from_base64(&k.private.to_base64()).unwrap(),
            k.private
        );
    }

    #[test]
    fn known_vector_matches_wg_pubkey() {
        // Cross-checked with `wg pubkey`.
        let private =
            PrivateKey::from_base64("YNqHbfBQKaGvzefSSLXEXvMqPRx4hV3bdX1pLu4IEXo=").unwrap();
        assert_eq!(
            private.public_key().to_base64(),
            "PWMPy3eNN0/mK6DLFq7blkBheoR81Uykq5AWBsHfMhA="
        );
    }

    #[test]
    fn malformed_keys_say_why() {
        assert!(matches!(
            PublicKey::from_base64("abc"),
            Err(KeyError::TextLength(3))
        ));
        let bad = "!".repeat(44);
        assert!(matches!(
            PublicKey::from_base64(&bad),
            Err(KeyError::Base64(_))
        ));
        // 33 bytes of base64 without padding is 44 chars.
        let long = STANDARD.encode([0u8; 33]);
        assert_eq!(long.len(), 44);
        assert!(matches!(
            PublicKey::from_base64(&long),
            Err(KeyError::Length(33))
        ));
    }

    #[test]
    fn generated_keys_are_clamped_and_distinct() {
        let a = PrivateKey::generate().unwrap();
        let b = PrivateKey::generate().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.0[0] & 7, 0);
        assert_eq!(a.0[31] & 0xc0, 0x40);
    }

    #[test]
    fn load_or_create_persists_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/wg.key");
        let k1 = PrivateKey::load_or_create(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let k2 = PrivateKey::load_or_create(&path).unwrap();
        assert_eq!(k1, k2);
        let leftovers: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left: {leftovers:?}");
    }

    #[test]
    fn load_or_create_refuses_a_malformed_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wg.key");
        fs::write(&path, "not a key\n").unwrap();
        let err = PrivateKey::load_or_create(&path).unwrap_err();
        assert!(matches!(err, KeyError::Malformed { .. }), "{err}");
        assert!(err.to_string().contains("wg.key"), "{err}");
        // The bad file is left for a human to look at, not replaced.
        assert_eq!(fs::read_to_string(&path).unwrap(), "not a key\n");
    }

    #[test]
    fn debug_does_not_leak_the_secret() {
        let k = PrivateKey::generate().unwrap();
        assert!(!format!("{k:?}").contains(&k.to_base64()));
    }
}
