//! Matchers shared by routes, RBAC, retries and faults.

use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::r#type::matcher::v3 as pbm;

use super::{At, FieldError};
use crate::model::{
    Cidr, FullRegex, HeaderMatch, HeaderMatcher, QueryParamMatcher, StringMatch, StringMatcher,
};

pub(crate) fn regex(m: &pbm::RegexMatcher) -> Result<FullRegex, FieldError> {
    FullRegex::new(&m.regex)
        .map_err(|e| FieldError::new(format!("invalid regex {:?}: {e}", m.regex)).at("regex"))
}

pub(crate) fn string_matcher(m: &pbm::StringMatcher) -> Result<StringMatcher, FieldError> {
    use pbm::string_matcher::MatchPattern as P;
    let kind = match &m.match_pattern {
        Some(P::Exact(s)) => StringMatch::Exact(s.as_str().into()),
        Some(P::Prefix(s)) if s.is_empty() => {
            return Err(FieldError::new("must not be empty").at("prefix"));
        }
        Some(P::Prefix(s)) => StringMatch::Prefix(s.as_str().into()),
        Some(P::Suffix(s)) if s.is_empty() => {
            return Err(FieldError::new("must not be empty").at("suffix"));
        }
        Some(P::Suffix(s)) => StringMatch::Suffix(s.as_str().into()),
        Some(P::Contains(s)) if s.is_empty() => {
            return Err(FieldError::new("must not be empty").at("contains"));
        }
        Some(P::Contains(s)) => StringMatch::Contains(s.as_str().into()),
        Some(P::SafeRegex(r)) => StringMatch::Regex(regex(r).at("safe_regex")?),
        Some(P::Custom(c)) => {
            return Err(FieldError::new(format!(
                "custom string matcher {:?} is not supported",
                c.name
            ))
            .at("custom"));
        }
        None => return Err(FieldError::new("no match_pattern set")),
    };
    Ok(StringMatcher {
        kind,
        ignore_case: m.ignore_case,
    })
}

pub(crate) fn header_matcher(h: &route::HeaderMatcher) -> Result<HeaderMatcher, FieldError> {
    use route::header_matcher::HeaderMatchSpecifier as S;
    if h.name.is_empty() {
        return Err(FieldError::new("must not be empty").at("name"));
    }
    let kind = match &h.header_match_specifier {
        // Envoy quirk, kept for fidelity: an empty exact_match accepts any value.
        Some(S::ExactMatch(s)) if s.is_empty() => HeaderMatch::String(StringMatcher {
            kind: StringMatch::Prefix("".into()),
            ignore_case: false,
        }),
        Some(S::ExactMatch(s)) => HeaderMatch::String(StringMatcher::exact(s.as_str())),
        Some(S::SafeRegexMatch(r)) => HeaderMatch::String(StringMatcher {
            kind: StringMatch::Regex(regex(r).at("safe_regex_match")?),
            ignore_case: false,
        }),
        Some(S::RangeMatch(r)) => {
            if r.start >= r.end {
                return Err(FieldError::new(format!(
                    "start {} must be below end {}",
                    r.start, r.end
                ))
                .at("range_match"));
            }
            HeaderMatch::Range {
                start: r.start,
                end: r.end,
            }
        }
        Some(S::PresentMatch(p)) => HeaderMatch::Present(*p),
        Some(S::PrefixMatch(s)) => HeaderMatch::String(StringMatcher {
            kind: StringMatch::Prefix(s.as_str().into()),
            ignore_case: false,
        }),
        Some(S::SuffixMatch(s)) => HeaderMatch::String(StringMatcher {
            kind: StringMatch::Suffix(s.as_str().into()),
            ignore_case: false,
        }),
        Some(S::ContainsMatch(s)) => HeaderMatch::String(StringMatcher {
            kind: StringMatch::Contains(s.as_str().into()),
            ignore_case: false,
        }),
        Some(S::StringMatch(m)) => HeaderMatch::String(string_matcher(m).at("string_match")?),
        // An empty specifier means "present" in Envoy.
        None => HeaderMatch::Present(true),
    };
    Ok(HeaderMatcher {
        name: h.name.to_ascii_lowercase().into(),
        kind,
        invert: h.invert_match,
        treat_missing_as_empty: h.treat_missing_header_as_empty,
    })
}

pub(crate) fn query_matcher(
    q: &route::QueryParameterMatcher,
) -> Result<QueryParamMatcher, FieldError> {
    use route::query_parameter_matcher::QueryParameterMatchSpecifier as S;
    if q.name.is_empty() {
        return Err(FieldError::new("must not be empty").at("name"));
    }
    let value = match &q.query_parameter_match_specifier {
        Some(S::StringMatch(m)) => Some(string_matcher(m).at("string_match")?),
        Some(S::PresentMatch(true)) | None => None,
        Some(S::PresentMatch(false)) => {
            return Err(
                FieldError::new("present_match: false is not supported").at("present_match")
            );
        }
    };
    Ok(QueryParamMatcher {
        name: q.name.as_str().into(),
        value,
    })
}

pub(crate) fn path_matcher(p: &pbm::PathMatcher) -> Result<StringMatcher, FieldError> {
    match &p.rule {
        Some(pbm::path_matcher::Rule::Path(m)) => string_matcher(m).at("path"),
        None => Err(FieldError::new("no rule set")),
    }
}

pub(crate) fn cidr(c: &CidrRange) -> Result<Cidr, FieldError> {
    let addr: std::net::IpAddr = c.address_prefix.parse().map_err(|_| {
        FieldError::new(format!("invalid IP address {:?}", c.address_prefix)).at("address_prefix")
    })?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    // Unset is 0, as Envoy reads it (the whole address family), not a single address: a
    // DENY rule written without a length must refuse what Envoy refuses.
    let len = c.prefix_len.as_ref().map_or(0, |v| v.value);
    if len > max {
        return Err(FieldError::new(format!("prefix_len {len} exceeds {max}")).at("prefix_len"));
    }
    Ok(Cidr {
        addr,
        prefix_len: len as u8,
    })
}
