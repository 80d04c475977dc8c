//! A JWT issuer for tests: an ES256 key generated at start, its JWKS, and tokens signed with
//! it (what a RequestAuthentication's `jwks` and a client's `Authorization: Bearer` carry).

use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk};

/// An issuer with its own signing key.
pub struct Issuer {
    /// The `iss` its tokens carry.
    pub issuer: String,
    key: EncodingKey,
    kid: String,
}

impl Issuer {
    /// A new issuer with a fresh P-256 key.
    pub fn new(issuer: &str) -> Self {
        let pair = rcgen::KeyPair::generate().expect("generate an EC key");
        Self {
            issuer: issuer.to_owned(),
            key: EncodingKey::from_ec_der(pair.serialized_der()),
            kid: format!("test-{:08x}", fastrand::u32(..)),
        }
    }

    /// The JWKS document with the issuer's public key.
    pub fn jwks(&self) -> String {
        let mut jwk = Jwk::from_encoding_key(&self.key, Algorithm::ES256).expect("JWK");
        jwk.common.key_id = Some(self.kid.clone());
        serde_json::json!({ "keys": [jwk] }).to_string()
    }

    /// A token for `sub` with these extra claims, valid for an hour.
    pub fn token(&self, sub: &str, extra: serde_json::Value) -> String {
        let now = jsonwebtoken::get_current_timestamp();
        self.token_with(sub, now + 3600, extra)
    }

    /// A token for `sub` that expires at `exp` (seconds since the epoch).
    pub fn token_with(&self, sub: &str, exp: u64, extra: serde_json::Value) -> String {
        let mut claims = serde_json::json!({"iss": self.issuer, "sub": sub, "exp": exp});
        if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.key).expect("sign a token")
    }
}
