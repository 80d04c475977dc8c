//! `xds:` target URIs, as gRPC's xDS name resolver reads them (gRFC A27, A47):
//! `xds:///name[:port]` for the bootstrap's default authority, `xds://authority/name[:port]`
//! for a federation authority.

use std::fmt;
use std::str::FromStr;

/// A parsed `xds:` target.
///
/// ```
/// use mesh_grpc::XdsUri;
/// let t: XdsUri = "xds:///ratings:9080".parse().unwrap();
/// assert_eq!((t.authority(), t.name()), (None, "ratings:9080"));
/// let t: XdsUri = "xds://mesh.example/ratings.default.svc.cluster.local:9080".parse().unwrap();
/// assert_eq!(t.authority(), Some("mesh.example"));
/// assert!("http://ratings:9080".parse::<XdsUri>().is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XdsUri {
    authority: Option<String>,
    name: String,
}

/// Why a target is not an `xds:` URI.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{target:?} is not an xds target ({why}); expected xds:///name[:port]")]
pub struct XdsUriError {
    target: String,
    why: &'static str,
}

impl XdsUri {
    /// The federation authority, when the URI names one.
    pub fn authority(&self) -> Option<&str> {
        self.authority.as_deref()
    }

    /// The service name (`host[:port]`), which names the listener to watch.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The HTTP authority requests carry: the name, with port 80 when it has none (as
    /// gRPC's default for the xds scheme's listener names is the name as written).
    pub fn http_authority(&self) -> String {
        if self
            .name
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            self.name.clone()
        } else {
            format!("{}:80", self.name)
        }
    }
}

impl FromStr for XdsUri {
    type Err = XdsUriError;

    fn from_str(s: &str) -> Result<Self, XdsUriError> {
        let bad = |why| XdsUriError {
            target: s.to_owned(),
            why,
        };
        let rest = s
            .strip_prefix("xds:")
            .ok_or_else(|| bad("the scheme is not xds"))?;
        let rest = rest
            .strip_prefix("//")
            .ok_or_else(|| bad("no // after xds:"))?;
        let (authority, path) = rest
            .split_once('/')
            .ok_or_else(|| bad("no / before the name"))?;
        let name = path.trim_end_matches('/');
        if name.is_empty() {
            return Err(bad("the name is empty"));
        }
        if name.contains('/') || name.contains('?') || name.contains('#') {
            return Err(bad("the name has a path, query or fragment"));
        }
        Ok(Self {
            authority: (!authority.is_empty()).then(|| authority.to_owned()),
            name: name.to_owned(),
        })
    }
}

impl fmt::Display for XdsUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "xds://{}/{}",
            self.authority.as_deref().unwrap_or(""),
            self.name
        )
    }
}
