//! Verification of GitHub's `X-Hub-Signature-256` header.
//!
//! GitHub signs the raw request body with HMAC-SHA256 and sends `sha256=<64 hex digits>`.
//! Only that header and that prefix are accepted: the legacy SHA-1 header
//! (`X-Hub-Signature`, `sha1=`) is never consulted. The comparison is constant-time
//! (`hmac::Mac::verify_slice`) after decoding the hex and checking its length.

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

/// Header carrying the SHA-256 signature.
pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";

const PREFIX: &str = "sha256=";
const DIGEST_LEN: usize = 32;

/// Why a signature was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `X-Hub-Signature-256` header.
    #[error("missing X-Hub-Signature-256 header")]
    Missing,
    /// A `sha1=` signature; SHA-1 is not accepted.
    #[error("SHA-1 signatures are not accepted")]
    Sha1NotAccepted,
    /// Not of the form `sha256=<hex>`.
    #[error("signature does not start with sha256=")]
    BadPrefix,
    /// The hex part does not decode.
    #[error("signature is not hex")]
    BadHex,
    /// The digest is not 32 bytes.
    #[error("signature has the wrong length")]
    BadLength,
    /// Well-formed but does not match any configured secret.
    #[error("signature does not match")]
    Mismatch,
    /// No secret is configured, so nothing can be verified.
    #[error("no webhook secret configured")]
    NoSecret,
}

impl SignatureError {
    /// Short static category for metrics labels and logs.
    pub const fn category(&self) -> &'static str {
        match self {
            SignatureError::Missing => "missing",
            SignatureError::Sha1NotAccepted => "sha1",
            SignatureError::BadPrefix => "bad_prefix",
            SignatureError::BadHex => "bad_hex",
            SignatureError::BadLength => "bad_length",
            SignatureError::Mismatch => "mismatch",
            SignatureError::NoSecret => "no_secret",
        }
    }
}

/// Computes the header value GitHub would send for `body` signed with `secret`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for HMAC.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("{PREFIX}{}", hex::encode(mac.finalize().into_bytes()))
}

/// Decodes a header value into the 32-byte digest.
fn decode(header: &str) -> Result<[u8; DIGEST_LEN], SignatureError> {
    let header = header.trim();
    let Some(hex_part) = header.strip_prefix(PREFIX) else {
        // `get`, not slicing: the fifth byte may sit inside a multi-byte character.
        if header
            .get(..5)
            .is_some_and(|p| p.eq_ignore_ascii_case("sha1="))
        {
            return Err(SignatureError::Sha1NotAccepted);
        }
        return Err(SignatureError::BadPrefix);
    };
    if hex_part.len() != DIGEST_LEN * 2 {
        // Distinguish a non-hex value from a hex value of the wrong length.
        return match hex::decode(hex_part) {
            Ok(_) => Err(SignatureError::BadLength),
            Err(_) => Err(SignatureError::BadHex),
        };
    }
    let mut digest = [0u8; DIGEST_LEN];
    hex::decode_to_slice(hex_part, &mut digest).map_err(|_| SignatureError::BadHex)?;
    Ok(digest)
}

/// Checks that `header` is a well-formed `sha256=<64 hex digits>` value, without the
/// body: lets the webhook refuse an unsigned request before reading its body.
pub fn check_syntax(header: Option<&str>) -> Result<(), SignatureError> {
    decode(header.ok_or(SignatureError::Missing)?).map(|_| ())
}

/// Verifies `header` (the value of `X-Hub-Signature-256`, if any) over the raw `body`
/// against every configured secret (several during a rotation). Constant-time per secret.
pub fn verify(
    secrets: &[SecretString],
    header: Option<&str>,
    body: &[u8],
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let digest = decode(header)?;
    if secrets.is_empty() {
        return Err(SignatureError::NoSecret);
    }
    let mut matched = false;
    for secret in secrets {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes()) else {
            continue;
        };
        mac.update(body);
        // Evaluate every secret so timing does not reveal which one matched.
        matched |= mac.verify_slice(&digest).is_ok();
    }
    if matched {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_multibyte_value_is_rejected_not_a_panic() {
        // Found by the fuzz target `webhook_delivery`: slicing at byte 5 panicked.
        for value in ["shaé=", "ééé", "sha1é", "sha256=é"] {
            assert!(super::check_syntax(Some(value)).is_err(), "{value}");
        }
    }

    use super::*;

    fn secrets(s: &str) -> Vec<SecretString> {
        vec![SecretString::from(s.to_string())]
    }

    const VECTOR: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    #[test]
    fn githubs_documented_vector_passes() {
        let s = secrets("It's a Secret to Everybody");
        assert_eq!(verify(&s, Some(VECTOR), b"Hello, World!"), Ok(()));
        assert_eq!(
            sign(b"It's a Secret to Everybody", b"Hello, World!"),
            VECTOR
        );
    }

    #[test]
    fn trailing_newline_fails() {
        let s = secrets("It's a Secret to Everybody");
        assert_eq!(
            verify(&s, Some(VECTOR), b"Hello, World!\n"),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            sign(b"It's a Secret to Everybody", b"Hello, World!\n"),
            "sha256=8fde2e970f9163923fb1cb61bb945626ff2b4091d87e622ee3ad600160592325"
        );
    }

    #[test]
    fn sha1_and_malformed_values_are_rejected() {
        let s = secrets("It's a Secret to Everybody");
        let body = b"Hello, World!";
        assert_eq!(
            verify(
                &s,
                Some("sha1=01dc10d0c83e72ed246219cdd91669667fe2ca59"),
                body
            ),
            Err(SignatureError::Sha1NotAccepted)
        );
        assert_eq!(verify(&s, None, body), Err(SignatureError::Missing));
        assert_eq!(
            verify(&s, Some(&VECTOR.replace("sha256=", "sha512=")), body),
            Err(SignatureError::BadPrefix)
        );
        assert_eq!(
            verify(&s, Some(&VECTOR.replace('7', "z")), body),
            Err(SignatureError::BadHex)
        );
        assert_eq!(
            verify(&s, Some(&VECTOR[..VECTOR.len() - 2]), body),
            Err(SignatureError::BadLength)
        );
        assert_eq!(
            verify(&s, Some("sha256="), body),
            Err(SignatureError::BadLength)
        );
    }

    #[test]
    fn any_configured_secret_matches_during_rotation() {
        let s = vec![
            SecretString::from("old".to_string()),
            SecretString::from("It's a Secret to Everybody".to_string()),
        ];
        assert_eq!(verify(&s, Some(VECTOR), b"Hello, World!"), Ok(()));
        assert_eq!(
            verify(&[], Some(VECTOR), b"Hello, World!"),
            Err(SignatureError::NoSecret)
        );
    }

    #[test]
    fn other_known_vector_passes() {
        let s = secrets("my_webhook_secret");
        assert_eq!(
            verify(
                &s,
                Some("sha256=a8591b84025410fb80a4c1621f4bf8e9c2576e5c2c7715a04609250612010665"),
                br#"{"action":"opened"}"#
            ),
            Ok(())
        );
    }
}
