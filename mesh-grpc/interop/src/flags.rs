//! The interop binaries' flags, spelled as grpc's interop clients and servers spell them
//! (`--server=xds:///host:port`, `--qps 100`; `--flag=value` and `--flag value` alike).

use std::collections::HashMap;

use crate::proto::RpcType;

/// Parsed `--name=value` flags; bare `--name` means `true`.
#[derive(Debug, Default)]
pub struct Flags {
    values: HashMap<String, String>,
}

/// A flag that could not be read; the message names the flag and the value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("--{flag}: {why}")]
pub struct FlagError {
    flag: String,
    why: String,
}

impl Flags {
    /// Parses `args` (without the program name), accepting only `known` flags.
    ///
    /// ```
    /// use mesh_grpc_interop::flags::Flags;
    /// let f = Flags::parse(["--qps=10", "--server", "xds:///s:8080"], &["qps", "server"]).unwrap();
    /// assert_eq!(f.number("qps", 1).unwrap(), 10);
    /// assert!(Flags::parse(["--qpz=1"], &["qps"]).is_err());
    /// ```
    pub fn parse<I, S>(args: I, known: &[&str]) -> Result<Self, FlagError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut values = HashMap::new();
        let mut args = args.into_iter().map(Into::into).peekable();
        while let Some(arg) = args.next() {
            let Some(flag) = arg.strip_prefix("--") else {
                return Err(FlagError {
                    flag: arg.clone(),
                    why: "not a --flag".into(),
                });
            };
            let (name, value) = match flag.split_once('=') {
                Some((n, v)) => (n.to_owned(), v.to_owned()),
                None => {
                    let value = match args.peek() {
                        Some(next) if !next.starts_with("--") => args.next().unwrap_or_default(),
                        _ => "true".to_owned(),
                    };
                    (flag.to_owned(), value)
                }
            };
            if !known.contains(&name.as_str()) {
                return Err(FlagError {
                    flag: name,
                    why: format!("unknown flag; known: {}", known.join(", ")),
                });
            }
            values.insert(name, value);
        }
        Ok(Self { values })
    }

    /// A string flag.
    pub fn string(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// A numeric flag, or `default`.
    pub fn number<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, FlagError> {
        match self.values.get(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| FlagError {
                flag: name.to_owned(),
                why: format!("{v:?} is not a number"),
            }),
        }
    }

    /// A boolean flag (`--secure_mode`, `--secure_mode=true`).
    pub fn bool(&self, name: &str) -> Result<bool, FlagError> {
        match self.values.get(name).map(String::as_str) {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(v) => Err(FlagError {
                flag: name.to_owned(),
                why: format!("{v:?} is not true or false"),
            }),
        }
    }
}

/// Parses `--rpc=UnaryCall,EmptyCall`.
///
/// ```
/// use mesh_grpc_interop::{flags::rpcs, proto::RpcType};
/// assert_eq!(rpcs("EmptyCall,UnaryCall").unwrap(), [RpcType::EmptyCall, RpcType::UnaryCall]);
/// assert!(rpcs("StreamingCall").is_err());
/// ```
pub fn rpcs(s: &str) -> Result<Vec<RpcType>, FlagError> {
    s.split(',')
        .filter(|m| !m.is_empty())
        .map(|m| {
            RpcType::from_method(m).ok_or_else(|| FlagError {
                flag: "rpc".into(),
                why: format!("{m:?} is not EmptyCall or UnaryCall"),
            })
        })
        .collect()
}

/// Parses `--metadata=EmptyCall:xds_md:empty_ytpme,UnaryCall:xds_md:unary_yranu`.
///
/// ```
/// use mesh_grpc_interop::{flags::metadata, proto::RpcType};
/// let md = metadata("UnaryCall:xds_md_numeric:159").unwrap();
/// assert_eq!(md, [(RpcType::UnaryCall, "xds_md_numeric".into(), "159".into())]);
/// assert!(metadata("UnaryCall:novalue").is_err());
/// ```
pub fn metadata(s: &str) -> Result<Vec<(RpcType, String, String)>, FlagError> {
    let bad = |why: String| FlagError {
        flag: "metadata".into(),
        why,
    };
    s.split(',')
        .filter(|e| !e.is_empty())
        .map(|entry| {
            let mut parts = entry.splitn(3, ':');
            let (Some(m), Some(k), Some(v)) = (parts.next(), parts.next(), parts.next()) else {
                return Err(bad(format!("{entry:?} is not METHOD:KEY:VALUE")));
            };
            let m = RpcType::from_method(m)
                .ok_or_else(|| bad(format!("{m:?} is not EmptyCall or UnaryCall")))?;
            Ok((m, k.to_owned(), v.to_owned()))
        })
        .collect()
}
