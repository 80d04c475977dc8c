//! The names in a peer's certificate, as Envoy's RBAC reads them for `authenticated` rules:
//! every URI SAN, then every DNS SAN, then the subject in RFC 2253 form.

use x509_parser::extensions::GeneralName;
use x509_parser::x509::X509Name;

/// The names a verified peer certificate (the leaf) carries.
///
/// ```
/// # fn show(chain: &[rustls::pki_types::CertificateDer<'_>]) {
/// // The leaf of a chain rustls verified:
/// let leaf = chain.first().and_then(|c| mesh_core::identity::PeerCertificate::from_der(c));
/// if let Some(peer) = leaf {
///     println!("{:?} {:?} {}", peer.uri_sans, peer.dns_sans, peer.subject);
/// }
/// # }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerCertificate {
    /// URI SANs, in certificate order (a SPIFFE ID among them, for mesh peers).
    pub uri_sans: Box<[Box<str>]>,
    /// DNS SANs.
    pub dns_sans: Box<[Box<str>]>,
    /// The subject, formatted as OpenSSL's `XN_FLAG_RFC2253` (what Envoy matches):
    /// `CN=client,O=example` (last RDN first, special characters escaped).
    pub subject: Box<str>,
}

impl PeerCertificate {
    /// Reads a DER certificate; `None` if it does not parse.
    pub fn from_der(der: &[u8]) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let mut uri_sans = Vec::new();
        let mut dns_sans = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(u) => uri_sans.push(Box::from(*u)),
                    GeneralName::DNSName(d) => dns_sans.push(Box::from(*d)),
                    _ => {}
                }
            }
        }
        Some(Self {
            uri_sans: uri_sans.into(),
            dns_sans: dns_sans.into(),
            subject: rfc2253(cert.subject()).into(),
        })
    }

    /// Whether `matches` accepts one of the names, in Envoy's order: every URI SAN, every
    /// DNS SAN, then the subject.
    pub fn any_name(&self, mut matches: impl FnMut(&str) -> bool) -> bool {
        self.uri_sans.iter().any(|u| matches(u))
            || self.dns_sans.iter().any(|d| matches(d))
            || matches(&self.subject)
    }
}

/// OpenSSL's short names for the attributes certificates use.
fn short_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.4" => "SN",
        "2.5.4.5" => "serialNumber",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "street",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.12" => "title",
        "2.5.4.42" => "GN",
        "2.5.4.43" => "initials",
        "2.5.4.46" => "dnQualifier",
        "0.9.2342.19200300.100.1.1" => "UID",
        "0.9.2342.19200300.100.1.25" => "DC",
        "1.2.840.113549.1.9.1" => "emailAddress",
        _ => return None,
    })
}

/// `X509_NAME_print_ex(…, XN_FLAG_RFC2253)`: RDNs last first, joined by `,`; attributes of one
/// RDN joined by `+`; string values escaped as RFC 2253 asks (and bytes of UTF-8 above ASCII
/// as `\XX`); unknown attributes and non-string values as `#` and their DER in hex.
fn rfc2253(name: &X509Name<'_>) -> String {
    let mut out = String::new();
    let rdns: Vec<_> = name.iter().collect();
    for (i, rdn) in rdns.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, attr) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            let oid = attr.attr_type().to_id_string();
            let known = short_name(&oid);
            out.push_str(known.unwrap_or(&oid));
            out.push('=');
            match (known, attr.as_str()) {
                (Some(_), Ok(value)) => escape_value(value, &mut out),
                _ => {
                    out.push('#');
                    for b in der_of(attr.attr_value()) {
                        out.push_str(&format!("{b:02X}"));
                    }
                }
            }
        }
    }
    out
}

/// A value's DER encoding (tag, length, content), as OpenSSL dumps what it cannot print.
fn der_of(value: &x509_parser::der_parser::asn1_rs::Any<'_>) -> Vec<u8> {
    let data = value.data;
    let mut out = vec![value.tag().0 as u8];
    match data.len() {
        n if n < 0x80 => out.push(n as u8),
        n => {
            let len = (n as u64).to_be_bytes();
            let skip = len.iter().take_while(|b| **b == 0).count();
            out.push(0x80 | (8 - skip) as u8);
            out.extend_from_slice(&len[skip..]);
        }
    }
    out.extend_from_slice(data);
    out
}

fn escape_value(value: &str, out: &mut String) {
    let bytes = value.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        let edge = i == 0 || i + 1 == bytes.len();
        match b {
            b',' | b'+' | b'"' | b'\\' | b'<' | b'>' | b';' => {
                out.push('\\');
                out.push(b as char);
            }
            b'#' if i == 0 => out.push_str("\\#"),
            b' ' if edge => out.push_str("\\ "),
            0..=0x1f | 0x7f..=0xff => out.push_str(&format!("\\{b:02X}")),
            _ => out.push(b as char),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(dn: &[(rcgen::DnType, &str)], sans: Vec<rcgen::SanType>) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (t, v) in dn {
            params.distinguished_name.push(t.clone(), *v);
        }
        params.subject_alt_names = sans;
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn every_san_then_the_subject() {
        use rcgen::{DnType, SanType};
        let der = cert(
            &[
                (DnType::CountryName, "US"),
                (DnType::OrganizationName, "Example, Inc."),
                (DnType::CommonName, "client"),
            ],
            vec![
                SanType::URI("https://example.com/first".try_into().unwrap()),
                SanType::URI("spiffe://cluster.local/ns/a/sa/b".try_into().unwrap()),
                SanType::DnsName("client.example.com".try_into().unwrap()),
            ],
        );
        let names = PeerCertificate::from_der(&der).unwrap();
        assert_eq!(names.uri_sans.len(), 2, "every URI SAN");
        assert_eq!(&*names.dns_sans[0], "client.example.com");
        assert_eq!(&*names.subject, "CN=client,O=Example\\, Inc.,C=US");
        assert!(names.any_name(|n| n == "spiffe://cluster.local/ns/a/sa/b"));
        assert!(names.any_name(|n| n == "client.example.com"));
        assert!(names.any_name(|n| n.starts_with("CN=client")));
        assert!(!names.any_name(|n| n == "spiffe://cluster.local/ns/a/sa/c"));
    }
}
