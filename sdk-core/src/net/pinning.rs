//! Certificate pinning: the relay's certificate chain must contain a known public key.
//!
//! A pin is the SHA-256 of a certificate's DER `SubjectPublicKeyInfo`, written
//! `sha256/<base64>` as HPKP, OkHttp's `CertificatePinner` and TrustKit write it (the
//! prefix may be left out). A [`PinSet`] holds several pins — the current key and at
//! least one backup, so that a key can be rotated without shipping a new app — and an
//! optional expiry after which pinning is no longer enforced, so that an app nobody
//! updates cannot lock itself out for good once the pinned keys are retired.
//!
//! Verification (on both QUIC and HTTPS): the normal verification runs first and
//! unchanged (chain to a trusted root, validity, name). Then a path from the server's
//! certificate to a trusted root must exist that contains a pinned key: on the
//! end-entity certificate, on an intermediate, or on the root itself (a root the server
//! does not send is still part of the path). Any one pin matching passes. A mismatch
//! fails the handshake like any other certificate error — for the uploader a transport
//! failure, so the batch is kept and retried — and is counted
//! ([`crate::upload::UploadStats::pin_failures`]).
//!
//! Time comes from rustls (the same clock it checks certificate validity with).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// The SHA-256 of a DER `SubjectPublicKeyInfo`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pin([u8; 32]);

impl Pin {
    /// Parses `sha256/<base64>` (or the bare base64 of the 32-byte hash).
    pub fn parse(text: &str) -> Result<Pin, &'static str> {
        // (`/` is also a base64 digit: look for a hash name before it, not just a `/`.)
        let b64 = match text.strip_prefix("sha256/") {
            Some(rest) => rest,
            None if text.starts_with("sha") && text.contains('/') => {
                return Err("only sha256/ pins are supported")
            }
            None => text,
        };
        let bytes = base64_decode(b64).ok_or("not base64 (standard alphabet, padded)")?;
        let hash: [u8; 32] = bytes
            .try_into()
            .map_err(|_| "not a SHA-256 hash (32 bytes)")?;
        Ok(Pin(hash))
    }

    /// The pin of a DER `SubjectPublicKeyInfo` (outer `SEQUENCE` included).
    pub fn of_spki(spki_der: &[u8]) -> Pin {
        let digest = ring::digest::digest(&ring::digest::SHA256, spki_der);
        let mut hash = [0u8; 32];
        hash.copy_from_slice(digest.as_ref());
        Pin(hash)
    }

    /// The pin of a DER certificate's public key; `None` if it does not parse.
    pub fn of_certificate(cert_der: &[u8]) -> Option<Pin> {
        let der = CertificateDer::from(cert_der);
        let cert = webpki::EndEntityCert::try_from(&der).ok()?;
        Some(Pin::of_spki(&cert.subject_public_key_info()))
    }
}

impl std::fmt::Display for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256/{}", base64_encode(&self.0))
    }
}

impl std::fmt::Debug for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// A pin set could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PinError {
    /// No pins were given.
    #[error("no pins given")]
    Empty,
    /// One pin does not parse.
    #[error("pin {index} ({pin:?}): {reason}")]
    Invalid {
        /// Its position in the list (0-based).
        index: usize,
        /// The pin as given.
        pin: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// The pins a relay's certificate chain must match, with an optional expiry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinSet {
    pins: Vec<Pin>,
    expires_at: Option<SystemTime>,
}

impl PinSet {
    /// A set of `pins` (`sha256/<base64>`), enforced without expiry. Give the current
    /// key and at least one backup key.
    pub fn parse<I, S>(pins: I) -> Result<PinSet, PinError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let pins = pins
            .into_iter()
            .enumerate()
            .map(|(index, p)| {
                Pin::parse(p.as_ref().trim()).map_err(|reason| PinError::Invalid {
                    index,
                    pin: p.as_ref().to_owned(),
                    reason,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        PinSet::new(pins)
    }

    /// A set of parsed pins; fails if empty.
    pub fn new(pins: Vec<Pin>) -> Result<PinSet, PinError> {
        if pins.is_empty() {
            return Err(PinError::Empty);
        }
        Ok(PinSet {
            pins,
            expires_at: None,
        })
    }

    /// Stops enforcing the pins from `at` on (normal certificate verification still
    /// applies). Set it to a date well after the app's expected update cycle.
    pub fn expiring_at(mut self, at: SystemTime) -> Self {
        self.expires_at = Some(at);
        self
    }

    /// The pins.
    pub fn pins(&self) -> &[Pin] {
        &self.pins
    }

    /// When the pins stop being enforced, if ever.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }

    /// Whether the pins are enforced at `now` (seconds since the Unix epoch).
    fn enforced_at(&self, now_secs: u64) -> bool {
        match self.expires_at {
            None => true,
            Some(at) => {
                let at = at
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                now_secs < at
            }
        }
    }

    /// Whether a key of `path` (end entity, intermediates, root) is pinned.
    fn matches(&self, path: &webpki::VerifiedPath<'_>) -> bool {
        let pinned = |spki: &[u8]| self.pins.contains(&Pin::of_spki(spki));
        pinned(&path.end_entity().subject_public_key_info())
            || path
                .intermediate_certificates()
                .any(|c| pinned(&c.subject_public_key_info()))
            || pinned(&webpki::spki_for_anchor(path.anchor()))
    }
}

/// The server certificate verifier with pinning: webpki's normal verification, then
/// the pin check (module docs).
#[derive(Debug)]
pub(crate) struct PinningVerifier {
    roots: Arc<RootCertStore>,
    webpki: Arc<WebPkiServerVerifier>,
    algorithms: WebPkiSupportedAlgorithms,
    pins: PinSet,
    failures: Arc<AtomicU64>,
}

impl PinningVerifier {
    /// Verifies against `roots` with `provider`'s algorithms, then `pins`; counts
    /// mismatches in `failures`.
    pub(crate) fn new(
        roots: Arc<RootCertStore>,
        provider: Arc<CryptoProvider>,
        pins: PinSet,
        failures: Arc<AtomicU64>,
    ) -> Result<PinningVerifier, rustls::client::VerifierBuilderError> {
        let algorithms = provider.signature_verification_algorithms;
        let webpki =
            WebPkiServerVerifier::builder_with_provider(roots.clone(), provider).build()?;
        Ok(PinningVerifier {
            roots,
            webpki,
            algorithms,
            pins,
            failures,
        })
    }
}

impl ServerCertVerifier for PinningVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        if !self.pins.enforced_at(now.as_secs()) {
            return Ok(verified);
        }
        // The chain is valid; now look for a valid path through a pinned key (there
        // may be several, e.g. with cross-signed intermediates).
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let pinned = |path: &webpki::VerifiedPath<'_>| {
            if self.pins.matches(path) {
                Ok(())
            } else {
                Err(webpki::Error::UnknownIssuer)
            }
        };
        let result = cert.verify_for_usage(
            self.algorithms.all,
            &self.roots.roots,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            Some(&pinned),
        );
        match result {
            Ok(_) => Ok(verified),
            Err(_) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                let chain: Vec<String> = std::iter::once(end_entity)
                    .chain(intermediates)
                    .filter_map(|c| Pin::of_certificate(c).map(|p| p.to_string()))
                    .collect();
                tracing::warn!(
                    server = ?server_name,
                    chain = ?chain,
                    pins = ?self.pins.pins,
                    "certificate pinning failed: no pinned key in the relay's certificate chain"
                );
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::ApplicationVerificationFailure,
                ))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (RFC 4648 §4).
fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard padded base64; `None` unless the text is canonical (length a
/// multiple of 4, at most two `=` at the end, unused bits zero).
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.as_bytes();
    if text.is_empty() || !text.len().is_multiple_of(4) {
        return None;
    }
    let pad = text.iter().rev().take_while(|&&c| c == b'=').count();
    if pad > 2 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    for (q, quad) in text.chunks(4).enumerate() {
        let last = q == text.len() / 4 - 1;
        let used = if last { 4 - pad } else { 4 };
        let mut n = 0u32;
        for (i, &c) in quad.iter().enumerate() {
            let v = if i < used {
                ALPHABET.iter().position(|&a| a == c)? as u32
            } else {
                0
            };
            n |= v << (18 - 6 * i);
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        let keep = used - 1;
        if bytes[keep..].iter().any(|&b| b != 0) {
            return None; // non-zero bits in the padding
        }
        out.extend_from_slice(&bytes[..keep]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    #[test]
    fn base64_matches_the_rfc_4648_vectors() {
        let vectors = [
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in vectors {
            assert_eq!(base64_encode(plain.as_bytes()), encoded);
            assert_eq!(base64_decode(encoded).unwrap(), plain.as_bytes());
        }
        for bad in [
            "", "Zg", "Zg=", "Z===", "Zh==", "Zm9v!A==", "Zg==Zg==", "Zm-v",
        ] {
            assert_eq!(base64_decode(bad), None, "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn base64_round_trips(bytes in proptest::collection::vec(any::<u8>(), 1..80)) {
            prop_assert_eq!(base64_decode(&base64_encode(&bytes)), Some(bytes));
        }

        #[test]
        fn pins_round_trip_through_their_text(hash in any::<[u8; 32]>()) {
            let pin = Pin(hash);
            prop_assert_eq!(Pin::parse(&pin.to_string()), Ok(pin));
        }
    }

    #[test]
    fn pins_are_parsed_strictly_and_errors_name_the_pin() {
        // SHA-256 of the empty string, a well-known value.
        let empty = "sha256/47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";
        assert_eq!(Pin::of_spki(b"").to_string(), empty);
        assert_eq!(Pin::parse(empty), Ok(Pin::of_spki(b"")));
        assert_eq!(Pin::parse(&empty[7..]), Ok(Pin::of_spki(b"")));
        assert_eq!(
            Pin::parse("sha1/AAAAAAAAAAAAAAAAAAAAAAAAAAA="),
            Err("only sha256/ pins are supported")
        );
        assert!(Pin::parse("sha256/Zm9vYmFy").is_err(), "not 32 bytes");
        let e = PinSet::parse([empty, "sha256/n*pe"]).unwrap_err();
        assert_eq!(
            e,
            PinError::Invalid {
                index: 1,
                pin: "sha256/n*pe".into(),
                reason: "not base64 (standard alphabet, padded)"
            }
        );
        assert!(e.to_string().starts_with("pin 1 (\"sha256/n*pe\")"), "{e}");
        assert_eq!(PinSet::parse(Vec::<String>::new()), Err(PinError::Empty));
        let set = PinSet::parse([format!(" {empty} ")]).unwrap();
        assert_eq!(set.pins(), &[Pin::of_spki(b"")]);
    }

    #[test]
    fn pins_stop_being_enforced_at_their_expiry() {
        let set = PinSet::parse(["sha256/47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="]).unwrap();
        assert!(set.enforced_at(u64::MAX));
        let set = set.expiring_at(UNIX_EPOCH + Duration::from_secs(1_000));
        assert!(set.enforced_at(999));
        assert!(!set.enforced_at(1_000));
        assert!(!set.enforced_at(5_000));
    }

    /// A root CA, an intermediate it signed, and a `localhost` leaf the intermediate
    /// signed, each with its own key.
    struct Pki {
        root: rcgen::Certificate,
        intermediate: rcgen::Certificate,
        leaf: rcgen::Certificate,
    }

    fn ca_params(name: &str) -> rcgen::CertificateParams {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, name.to_owned());
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        p
    }

    fn pki() -> Pki {
        let root_key = rcgen::KeyPair::generate().unwrap();
        let root = ca_params("test root").self_signed(&root_key).unwrap();
        let root_issuer = rcgen::Issuer::new(ca_params("test root"), root_key);
        let int_key = rcgen::KeyPair::generate().unwrap();
        let intermediate = ca_params("test intermediate")
            .signed_by(&int_key, &root_issuer)
            .unwrap();
        let int_issuer = rcgen::Issuer::new(ca_params("test intermediate"), int_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &int_issuer)
            .unwrap();
        Pki {
            root,
            intermediate,
            leaf,
        }
    }

    fn verifier(pki: &Pki, pins: PinSet) -> (PinningVerifier, Arc<AtomicU64>) {
        let mut roots = RootCertStore::empty();
        roots.add(pki.root.der().clone()).unwrap();
        let failures = Arc::new(AtomicU64::new(0));
        let v = PinningVerifier::new(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
            pins,
            failures.clone(),
        )
        .unwrap();
        (v, failures)
    }

    fn now() -> UnixTime {
        UnixTime::now()
    }

    fn verify(v: &PinningVerifier, pki: &Pki, name: &str) -> Result<(), rustls::Error> {
        v.verify_server_cert(
            pki.leaf.der(),
            std::slice::from_ref(pki.intermediate.der()),
            &ServerName::try_from(name.to_owned()).unwrap(),
            &[],
            now(),
        )
        .map(|_| ())
    }

    fn pin_of(c: &rcgen::Certificate) -> Pin {
        Pin::of_certificate(c.der()).unwrap()
    }

    #[test]
    fn a_pin_on_any_certificate_of_the_path_passes_including_the_unsent_root() {
        let pki = pki();
        for (which, pin) in [
            ("leaf", pin_of(&pki.leaf)),
            ("intermediate", pin_of(&pki.intermediate)),
            ("root (not sent by the server)", pin_of(&pki.root)),
        ] {
            let (v, failures) = verifier(&pki, PinSet::new(vec![pin]).unwrap());
            assert_eq!(verify(&v, &pki, "localhost"), Ok(()), "pin on the {which}");
            assert_eq!(failures.load(Ordering::Relaxed), 0);
        }
    }

    #[test]
    fn no_pinned_key_in_the_chain_fails_and_is_counted() {
        let pki = pki();
        let other = self::pki();
        let (v, failures) = verifier(
            &pki,
            PinSet::new(vec![pin_of(&other.leaf), pin_of(&other.root)]).unwrap(),
        );
        for n in 1..=3 {
            assert_eq!(
                verify(&v, &pki, "localhost"),
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::ApplicationVerificationFailure
                ))
            );
            assert_eq!(failures.load(Ordering::Relaxed), n);
        }
    }

    #[test]
    fn a_rotated_set_passes_with_either_key() {
        let old = pki();
        let new = pki();
        // The app ships the old key and the new (backup) key; the relay moves from the
        // old certificate to the new one.
        let pins = PinSet::new(vec![pin_of(&old.leaf), pin_of(&new.leaf)]).unwrap();
        for (label, relay) in [("old", &old), ("new", &new)] {
            let (v, failures) = verifier(relay, pins.clone());
            assert_eq!(verify(&v, relay, "localhost"), Ok(()), "{label} key");
            assert_eq!(failures.load(Ordering::Relaxed), 0);
        }
    }

    #[test]
    fn expired_pins_are_not_enforced_but_the_chain_still_is() {
        let pki = pki();
        let other = self::pki();
        let expired = PinSet::new(vec![pin_of(&other.leaf)])
            .unwrap()
            .expiring_at(UNIX_EPOCH + Duration::from_secs(1));
        let (v, failures) = verifier(&pki, expired.clone());
        assert_eq!(verify(&v, &pki, "localhost"), Ok(()));
        assert_eq!(failures.load(Ordering::Relaxed), 0);
        // Normal verification is not relaxed by expired pins: the wrong name fails.
        assert!(matches!(
            verify(&v, &pki, "example.com"),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            ))
        ));
        // Not yet expired: enforced.
        let future = PinSet::new(vec![pin_of(&other.leaf)])
            .unwrap()
            .expiring_at(SystemTime::now() + Duration::from_secs(3600));
        let (v, failures) = verifier(&pki, future);
        assert!(verify(&v, &pki, "localhost").is_err());
        assert_eq!(failures.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_matching_pin_does_not_excuse_an_untrusted_chain() {
        let pki = pki();
        let stranger = self::pki();
        // Pinned to the stranger's own key, but the stranger's chain does not lead to a
        // trusted root: normal verification fails first, and it is not a pin failure.
        let (v, failures) = verifier(&pki, PinSet::new(vec![pin_of(&stranger.leaf)]).unwrap());
        let e = verify(&v, &stranger, "localhost").unwrap_err();
        assert!(
            matches!(e, rustls::Error::InvalidCertificate(ref c)
                if *c != CertificateError::ApplicationVerificationFailure),
            "{e:?}"
        );
        assert_eq!(failures.load(Ordering::Relaxed), 0);
    }
}
