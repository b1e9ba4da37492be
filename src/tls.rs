//! The one TLS configuration of the process: the certificate chain and key
//! of `--tls-cert` / `--tls-key`, which both front doors serve (the gRPC
//! port with ALPN `h2`, the HTTP port with ALPN `http/1.1`), and their
//! reload on SIGHUP.
//!
//! [`Certificates`] holds the current chain and key and is the certificate
//! resolver of every [`ServerConfig`] it makes, so a reload swaps one
//! pointer and the next handshake on either port presents the new
//! certificate; connections already open keep the keys they agreed on, so
//! no stream is dropped. A reload that fails (a missing file, a half-written
//! one, a key that does not match) changes nothing: the error says which
//! file and why, and the old certificate stays.
//!
//! rustls with the ring provider, TLS 1.2 and 1.3 only; PEM through
//! rustls-pki-types (shared/CAPABILITIES.md section 2a). Parsing is pure
//! (bytes in, a certified key or an error out) and unit-tested without
//! files or sockets.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::config::TlsFiles;
use crate::error::Error;

/// ALPN of the gRPC port.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN of the HTTP port.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// The certificate both ports present, reloadable.
pub struct Certificates {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl Certificates {
    /// Reads and checks both files. Errors name the flag and the file.
    pub fn load(files: &TlsFiles) -> Result<Arc<Certificates>, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = read_pair(files, &provider)?;
        Ok(Arc::new(Certificates {
            files: files.clone(),
            provider,
            current: RwLock::new(Arc::new(key)),
        }))
    }

    /// A server configuration for one port, presenting whatever certificate
    /// is current at each handshake.
    pub fn server_config(self: &Arc<Self>, alpn: &[u8]) -> Result<Arc<ServerConfig>, Error> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| Error::Config(format!("TLS: {e}")))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(Arc::new(config))
    }

    /// Reads both files again and, when they are good, serves them from the
    /// next handshake on. On error nothing changes.
    pub fn reload(&self) -> Result<(), Error> {
        let key = read_pair(&self.files, &self.provider)?;
        *self.current.write() = Arc::new(key);
        Ok(())
    }

    /// The SHA-256 fingerprint of the certificate served now, as `openssl
    /// x509 -fingerprint -sha256` prints it (for the log, to tell a reload
    /// took).
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.current.read())
    }

    /// The certificate file (for the log).
    pub fn cert_path(&self) -> &Path {
        &self.files.cert
    }
}

impl fmt::Debug for Certificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificates")
            .field("cert", &self.files.cert)
            .field("sha256", &self.fingerprint())
            .finish()
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().clone())
    }
}

/// Reads the two files of `files` and makes the key they describe.
fn read_pair(files: &TlsFiles, provider: &CryptoProvider) -> Result<CertifiedKey, Error> {
    let read = |flag: &str, path: &PathBuf| {
        std::fs::read(path).map_err(|e| Error::Config(format!("--{flag} {}: {e}", path.display())))
    };
    let cert = read("tls-cert", &files.cert)?;
    let key = read("tls-key", &files.key)?;
    certified_key(&cert, &key, provider).map_err(|e| {
        let (flag, path) = match e.file {
            File::Cert => ("tls-cert", &files.cert),
            File::Key => ("tls-key", &files.key),
        };
        Error::Config(format!("--{flag} {}: {}", path.display(), e.why))
    })
}

/// Which of the two files is wrong.
#[derive(Debug, Clone, Copy, PartialEq)]
enum File {
    Cert,
    Key,
}

/// Why a pair of PEM files makes no key, and which file is to blame.
#[derive(Debug)]
struct PemError {
    file: File,
    why: String,
}

fn blame(file: File, why: impl fmt::Display) -> PemError {
    PemError {
        file,
        why: why.to_string(),
    }
}

/// A certificate chain (PEM, leaf first) and its private key (PEM: PKCS#8,
/// PKCS#1 or SEC1) as one key rustls can serve.
fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    provider: &CryptoProvider,
) -> Result<CertifiedKey, PemError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| blame(File::Cert, e))?;
    if chain.is_empty() {
        return Err(blame(File::Cert, "no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            blame(File::Key, "no private key in the file")
        }
        e => blame(File::Key, e),
    })?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| blame(File::Key, e))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => Err(blame(
            File::Key,
            "the key does not belong to the first certificate of --tls-cert",
        )),
        Err(e) => Err(blame(File::Cert, e)),
    }
}

/// SHA-256 of the leaf certificate, colon-separated hex. The hash comes from
/// the ring provider rustls already carries: no crate of its own for one
/// digest.
fn fingerprint(key: &CertifiedKey) -> String {
    let Ok(leaf) = key.end_entity_cert() else {
        return String::new();
    };
    let sha256 = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256
        .tls13()
        .expect("a TLS 1.3 suite")
        .common
        .hash_provider;
    sha256
        .hash(leaf.as_ref())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    // Throwaway self-signed pairs for these tests only (EC P-256, CN
    // localhost), made with `openssl req -x509 -newkey ec ...`.
    const CERT_A: &str = "-----BEGIN CERTIFICATE-----
MIIBfzCCASWgAwIBAgIUUqVvn3w9eh0OT2CsIITEfdXLtG0wCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJbG9jYWxob3N0MCAXDTI2MTIwMzExMTkyMFoYDzIxMjYxMTA5
MTExOTIwWjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAAQfZ6dCuqQhgL/TcojwSwbauOMp2L6giyN9fpEGuIfkLAD5w99oO3oz
fDDAuBNZlfR9NyWxevc15QJLRPGZV2rio1MwUTAdBgNVHQ4EFgQUzR3MR1pjXDeb
zQTdrEDnIVwiZiYwHwYDVR0jBBgwFoAUzR3MR1pjXDebzQTdrEDnIVwiZiYwDwYD
VR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiATt69hzbzq2tXmVs1vslxC
imA0DohTh2OyrxWWnSG/wQIhAKyd4p5jLwkR+1C8XTuKLAEASSoo1JuPDT9Hn98F
xjtM
-----END CERTIFICATE-----
";
    const KEY_A: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgnYq0sT0Pk6O8DTMZ
1v9WWvMwvk2DWyEr9rAJjZhQmImhRANCAAQfZ6dCuqQhgL/TcojwSwbauOMp2L6g
iyN9fpEGuIfkLAD5w99oO3ozfDDAuBNZlfR9NyWxevc15QJLRPGZV2ri
-----END PRIVATE KEY-----
";
    /// `openssl x509 -in a.crt -noout -fingerprint -sha256`
    const SHA256_A: &str = "3F:61:61:D1:3F:2B:81:10:2E:84:DF:BD:A9:9B:E8:79:\
                            DE:48:AD:A6:2A:FA:5D:AC:71:86:66:AC:1C:F4:04:D3";
    const CERT_B: &str = "-----BEGIN CERTIFICATE-----
MIIBgDCCASWgAwIBAgIUNhfi050Dm+rYM2H1bbDcJ4mCUK4wCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJbG9jYWxob3N0MCAXDTI2MTIwMzExMTkyMFoYDzIxMjYxMTA5
MTExOTIwWjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAARBRMnutPOTrXe0e0GmmCIGdNRAxid8ZPDgWo5Yo4SwCoYzjywWHNMs
YF2Wn/IFYbREm3dUO786Wm/cAoUJYtuCo1MwUTAdBgNVHQ4EFgQUD5KHoa26Lchz
JLrPTeatipP6ZuUwHwYDVR0jBBgwFoAUD5KHoa26LchzJLrPTeatipP6ZuUwDwYD
VR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNJADBGAiEA4dFuLGdQUtKepIyFVJRE
6ANstDVJc7aygf8H/GdQuhECIQD2fB5LXbFIW3gSJNUDO3PPZMvx34uZeQPWDvwb
J0MIUQ==
-----END CERTIFICATE-----
";
    const KEY_B: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgTC6b2DoorUNTDi1G
B3l+MESGFuS/Gc9shgxykkWqCjuhRANCAARBRMnutPOTrXe0e0GmmCIGdNRAxid8
ZPDgWo5Yo4SwCoYzjywWHNMsYF2Wn/IFYbREm3dUO786Wm/cAoUJYtuC
-----END PRIVATE KEY-----
";

    fn ring() -> CryptoProvider {
        rustls::crypto::ring::default_provider()
    }

    #[test]
    fn a_pair_makes_a_key_with_the_fingerprint_openssl_prints() {
        let key = certified_key(CERT_A.as_bytes(), KEY_A.as_bytes(), &ring()).unwrap();
        assert_eq!(fingerprint(&key), SHA256_A);
        assert!(certified_key(CERT_B.as_bytes(), KEY_B.as_bytes(), &ring()).is_ok());
    }

    #[test]
    fn each_bad_input_blames_the_right_file() {
        let err =
            |c: &str, k: &str| certified_key(c.as_bytes(), k.as_bytes(), &ring()).unwrap_err();
        let e = err("", KEY_A);
        assert_eq!(
            (e.file, e.why.as_str()),
            (File::Cert, "no certificate in the file")
        );
        let e = err("garbage\n", KEY_A);
        assert_eq!(e.file, File::Cert);
        let e = err(CERT_A, "");
        assert_eq!(
            (e.file, e.why.as_str()),
            (File::Key, "no private key in the file")
        );
        // A key given as the certificate, a certificate as the key.
        assert_eq!(err(KEY_A, KEY_A).file, File::Cert);
        assert_eq!(err(CERT_A, CERT_A).file, File::Key);
        // Two good files that do not belong together.
        let e = err(CERT_A, KEY_B);
        assert_eq!(e.file, File::Key);
        assert!(e.why.contains("does not belong"), "{}", e.why);
        // A truncated PEM (a renewal caught half-written).
        let e = err(&CERT_A[..CERT_A.len() / 2], KEY_A);
        assert_eq!(e.file, File::Cert);
    }

    #[test]
    fn a_reload_swaps_the_certificate_and_a_bad_one_keeps_the_old() {
        let dir = std::env::temp_dir().join(format!("streamhub-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let files = TlsFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        std::fs::write(&files.cert, CERT_A).unwrap();
        std::fs::write(&files.key, KEY_A).unwrap();
        let certs = Certificates::load(&files).unwrap();
        // Both ports' configurations resolve through the one store.
        let _h2 = certs.server_config(ALPN_H2).unwrap();
        let _http = certs.server_config(ALPN_HTTP1).unwrap();
        assert_eq!(certs.fingerprint(), SHA256_A);

        std::fs::write(&files.cert, CERT_B).unwrap();
        std::fs::write(&files.key, KEY_B).unwrap();
        certs.reload().unwrap();
        let b = certs.fingerprint();
        assert_ne!(b, SHA256_A);

        std::fs::write(&files.cert, "not a certificate").unwrap();
        let e = certs.reload().unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("--tls-cert {}", files.cert.display())),
            "{e}"
        );
        assert_eq!(certs.fingerprint(), b, "the old certificate stays");

        std::fs::remove_file(&files.key).unwrap();
        std::fs::write(&files.cert, CERT_A).unwrap();
        let e = certs.reload().unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("--tls-key {}", files.key.display())),
            "{e}"
        );
        assert_eq!(certs.fingerprint(), b);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
