//! Request path normalization, exactly as Envoy's HTTP connection manager does it before any
//! filter runs and before the route is chosen (`normalize_path`, `merge_slashes`,
//! `path_with_escaped_slashes_action`).
//!
//! Policy decides on the path the application will see, so the two must agree: a `DENY` on
//! `/admin/*` has to catch `/public/../admin/x`, `/%61dmin/x` and `/admin/..;/admin/x` too.
//! Envoy's steps, in its order, on the part of the path before the first `?` (the query is kept
//! byte for byte):
//!
//! 1. **escaped slashes** (unless `KeepUnchanged`): `%2F`, `%2f` become `/`, `%5C`, `%5c`
//!    become `\`; when that changed anything, `RejectRequest` answers 400,
//!    `UnescapeAndRedirect` answers 307 to the final path, `UnescapeAndForward` goes on;
//! 2. **canonicalization** (`normalize_path`): Chromium's URL path canonicalizer, which Envoy
//!    uses ([`canonicalize`]): dot segments removed (`.`, `..`, `%2e`, `%2E%2e`, and
//!    Tomcat-style `..;params`), `\` turned into `/`, percent-encoded unreserved characters
//!    (`A-Z a-z 0-9 - . _ ~`) decoded, characters that need escaping escaped, other escapes
//!    kept as written (their hex case included); `%00` or a NUL byte answers 400;
//! 3. **slash merging** (`merge_slashes`): runs of `/` become one ([`merge_slashes`]).
//!
//! Envoy 1.40 is the reference: `tests/integration/inbound_normalization.rs` sends the same
//! adversarial corpus to both and compares what the application sees.

use std::borrow::Cow;

/// How an HTTP connection manager normalizes request paths. The default does nothing, as
/// Envoy's defaults do (istiod asks for `normalize_path` everywhere: Istio's `BASE`).
///
/// ```
/// use mesh_core::model::{PathAction, PathNormalization};
/// let base = PathNormalization { normalize: true, ..Default::default() };
/// assert_eq!(base.apply("/public/../admin/%61?x=1"), PathAction::Forward("/admin/a?x=1".into()));
/// assert_eq!(base.apply("/admin"), PathAction::Keep);
/// assert_eq!(base.apply("/a%00"), PathAction::Reject);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathNormalization {
    /// `normalize_path`: RFC 3986 normalization by Chromium's canonicalizer.
    pub normalize: bool,
    /// `merge_slashes`.
    pub merge_slashes: bool,
    /// `path_with_escaped_slashes_action`.
    pub escaped_slashes: EscapedSlashes,
}

/// `path_with_escaped_slashes_action`: what a path with `%2F`, `%2f`, `%5C` or `%5c` gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EscapedSlashes {
    /// Left as they are (Envoy's default, `IMPLEMENTATION_SPECIFIC_DEFAULT`).
    #[default]
    KeepUnchanged,
    /// 400.
    RejectRequest,
    /// Unescaped, and the client redirected (307) to the normalized path; gRPC requests get
    /// 400, as they cannot follow a redirect.
    UnescapeAndRedirect,
    /// Unescaped, and forwarded.
    UnescapeAndForward,
}

/// What a request's path gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathAction {
    /// Nothing to change.
    Keep,
    /// Continue with this path (and query).
    Forward(String),
    /// Answer 307 with this `location` (the normalized path and query).
    Redirect(String),
    /// Answer 400.
    Reject,
}

impl PathNormalization {
    /// Whether anything is asked at all.
    pub fn is_noop(&self) -> bool {
        *self == Self::default()
    }

    /// Normalizes `path_and_query` (the `:path` pseudo-header: it must start with `/`).
    pub fn apply(&self, path_and_query: &str) -> PathAction {
        if self.is_noop() {
            return PathAction::Keep;
        }
        // A byte loop: `str::find(char)` costs about a hundred instructions more per call.
        let split = path_and_query
            .bytes()
            .position(|b| b == b'?')
            .unwrap_or(path_and_query.len());
        let (path, query) = path_and_query.split_at(split);
        let mut current = Cow::Borrowed(path.as_bytes());
        let mut redirect = false;
        if self.escaped_slashes != EscapedSlashes::KeepUnchanged
            && let Cow::Owned(unescaped) = unescape_slashes(&current)
        {
            match self.escaped_slashes {
                EscapedSlashes::RejectRequest => return PathAction::Reject,
                EscapedSlashes::UnescapeAndRedirect => redirect = true,
                _ => {}
            }
            current = Cow::Owned(unescaped);
        }
        if self.normalize {
            match canonicalize_fully(&current) {
                None => return PathAction::Reject,
                Some(Cow::Owned(c)) => current = Cow::Owned(c),
                Some(Cow::Borrowed(_)) => {}
            }
        }
        if self.merge_slashes
            && let Cow::Owned(m) = merge_slashes(&current)
        {
            current = Cow::Owned(m);
        }
        let Cow::Owned(bytes) = current else {
            return PathAction::Keep;
        };
        // Every step keeps ASCII ASCII: what it escapes it writes as `%XX`.
        let mut out = String::from_utf8(bytes)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        out.push_str(query);
        if redirect {
            PathAction::Redirect(out)
        } else if out == path_and_query {
            PathAction::Keep
        } else {
            PathAction::Forward(out)
        }
    }
}

/// [`canonicalize`] until the path no longer changes. Envoy runs it once, and one pass is not
/// always enough: `%2e` is decoded after the pass has decided that the segment is not a dot
/// segment, so `/a/.%2e;x/b` comes out as `/a/..;x/b`, which a Tomcat application reads as
/// `/b` while policy saw `/a/..;x/b`. A second pass removes it. Here normalization is
/// idempotent and stricter than Envoy's; the differential test lists where the two differ.
/// Input that still changes after four passes is refused (`None`): no such input is known.
pub fn canonicalize_fully(path: &[u8]) -> Option<Cow<'_, [u8]>> {
    let mut current = match canonicalize(path)? {
        // Unchanged: already a fixed point.
        Cow::Borrowed(same) => return Some(Cow::Borrowed(same)),
        Cow::Owned(changed) => changed,
    };
    for _ in 0..3 {
        match canonicalize(&current)? {
            Cow::Borrowed(_) => return Some(Cow::Owned(current)),
            Cow::Owned(next) => current = next,
        }
    }
    None
}

/// Envoy's `PathUtil::unescapeSlashes`: `%2F` and `%2f` become `/`, `%5C` and `%5c` become
/// `\`, in one pass from the left (what a replacement produces is not looked at again).
/// Borrowed when there was nothing to replace.
///
/// ```
/// use mesh_core::model::unescape_slashes;
/// assert_eq!(&*unescape_slashes(b"/a%2fb%5Cc"), b"/a/b\\c");
/// assert_eq!(&*unescape_slashes(b"/a%%2f"), b"/a%/");
/// assert_eq!(&*unescape_slashes(b"/a%252F"), b"/a%252F");
/// ```
pub fn unescape_slashes(path: &[u8]) -> Cow<'_, [u8]> {
    let is_slash_escape = |w: &[u8]| {
        w[0] == b'%' && matches!((w[1], w[2]), (b'2', b'F' | b'f') | (b'5', b'C' | b'c'))
    };
    if !path.windows(3).any(is_slash_escape) {
        return Cow::Borrowed(path);
    }
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        if i + 3 <= path.len() && is_slash_escape(&path[i..i + 3]) {
            out.push(if path[i + 1] == b'2' { b'/' } else { b'\\' });
            i += 3;
        } else {
            out.push(path[i]);
            i += 1;
        }
    }
    Cow::Owned(out)
}

/// Envoy's `PathUtil::mergeSlashes`: the non-empty segments joined by single slashes, with
/// the leading and trailing slash kept (so `//` stays `//`, as in Envoy). Borrowed when the
/// path has no `//`.
///
/// ```
/// use mesh_core::model::merge_slashes;
/// assert_eq!(&*merge_slashes(b"//a///b/"), b"/a/b/");
/// assert_eq!(&*merge_slashes(b"/a/b"), b"/a/b");
/// assert_eq!(&*merge_slashes(b"///"), b"//");
/// ```
pub fn merge_slashes(path: &[u8]) -> Cow<'_, [u8]> {
    if !path.windows(2).any(|w| w == b"//") {
        return Cow::Borrowed(path);
    }
    let mut out = Vec::with_capacity(path.len());
    if path.first() == Some(&b'/') {
        out.push(b'/');
    }
    for (n, segment) in path
        .split(|b| *b == b'/')
        .filter(|s| !s.is_empty())
        .enumerate()
    {
        if n > 0 {
            out.push(b'/');
        }
        out.extend_from_slice(segment);
    }
    if path.last() == Some(&b'/') {
        out.push(b'/');
    }
    Cow::Owned(out)
}

/// How Chromium's path canonicalizer treats each byte.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Copied as it is, escaped or not.
    Pass,
    /// Copied; when percent-encoded, decoded (the unreserved characters).
    Unescape,
    /// Escaped as `%XX` (upper-case hex).
    Escape,
    /// Needs a look around: `.` and `%` (dot segments, escapes), and `\`.
    Special,
    /// NUL: escaped, and the path is refused.
    Invalid,
}

/// [`class_of`] for every byte, looked up on the request path.
const CLASSES: [Class; 256] = {
    let mut table = [Class::Escape; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = class_of(b as u8);
        b += 1;
    }
    table
};

fn class(b: u8) -> Class {
    CLASSES[usize::from(b)]
}

/// Chromium's `kPathCharLookup` (url/url_canon_path.cc), which Envoy's `normalize_path` uses.
const fn class_of(b: u8) -> Class {
    match b {
        0x00 => Class::Invalid,
        b'.' | b'%' | b'\\' => Class::Special,
        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'~' => Class::Unescape,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'/' | b':' | b';'
        | b'=' | b'@' | b'[' | b']' => Class::Pass,
        // Controls, space, `"`, `#`, `<`, `>`, `?`, `^`, `` ` ``, `{`, `|`, `}`, DEL and
        // every byte above 0x7F.
        _ => Class::Escape,
    }
}

/// Envoy's `normalize_path` on a path (no query): Chromium's `CanonicalizePath` as Envoy 1.40
/// runs it. `None` when the path must be refused (a NUL byte, or `%00`); borrowed when it is
/// already canonical.
///
/// ```
/// use mesh_core::model::canonicalize;
/// let c = |p: &str| canonicalize(p.as_bytes()).map(|c| String::from_utf8(c.into_owned()).unwrap());
/// assert_eq!(c("/a/b/../%2e%2E/c").as_deref(), Some("/c"));
/// assert_eq!(c("/%61dmin/%7e%3a").as_deref(), Some("/admin/~%3a"));
/// assert_eq!(c("/a\\b/..;x/c").as_deref(), Some("/a/c"));
/// assert_eq!(c("/a%2fb").as_deref(), Some("/a%2fb"));
/// assert_eq!(c("/a{b}").as_deref(), Some("/a%7Bb%7D"));
/// assert_eq!(c("/a%00"), None);
/// ```
pub fn canonicalize(path: &[u8]) -> Option<Cow<'_, [u8]>> {
    if !path.is_empty() && path[0] == b'/' && path.iter().all(|b| plain(*b)) {
        // Nothing special and no dot or slash to look at twice: already canonical.
        return Some(Cow::Borrowed(path));
    }
    let mut c = Canonicalizer {
        input: path,
        out: Vec::with_capacity(path.len() + 8),
        valid: true,
        last_invalid_percent: None,
    };
    c.run();
    c.valid.then(|| {
        if c.out == path {
            Cow::Borrowed(path)
        } else {
            Cow::Owned(c.out)
        }
    })
}

/// A byte that canonicalization copies unchanged wherever it is (`/` included: only a dot
/// or an escape after it changes anything).
fn plain(b: u8) -> bool {
    matches!(class(b), Class::Pass | Class::Unescape)
}

struct Canonicalizer<'a> {
    input: &'a [u8],
    out: Vec<u8>,
    valid: bool,
    /// Where in `out` the last `%` that did not start a valid escape was written, for the
    /// nested-escape repair (`%%30%30` must not decode into `%00`).
    last_invalid_percent: Option<usize>,
}

/// What a dot that starts a segment turns out to be.
enum Dot {
    /// A name that starts with a dot.
    NotDirectory,
    /// `.`: dropped, with this many more input bytes.
    Current(usize),
    /// `..`: the previous segment removed, and this many more input bytes dropped.
    Up(usize),
}

impl Canonicalizer<'_> {
    fn run(&mut self) {
        let input = self.input;
        let end = input.len();
        if end == 0 {
            self.out.push(b'/');
            return;
        }
        if input[0] != b'/' && input[0] != b'\\' {
            self.out.push(b'/');
        }
        let mut i = 0;
        while i < end {
            let b = input[i];
            match class(b) {
                Class::Pass | Class::Unescape => self.out.push(b),
                Class::Escape => self.push_escaped(b),
                Class::Invalid => {
                    self.push_escaped(b);
                    self.valid = false;
                }
                Class::Special => {
                    let dot = dot_len(input, i);
                    if dot > 0 {
                        i += self.dot(i, dot);
                        continue;
                    }
                    if b == b'\\' {
                        self.out.push(b'/');
                    } else {
                        i += self.percent(i);
                        continue;
                    }
                }
            }
            i += 1;
        }
    }

    /// A dot (`.` or `%2e`, `dot` bytes long) at `i`; returns the input bytes consumed.
    fn dot(&mut self, i: usize, dot: usize) -> usize {
        if self.out.last() != Some(&b'/') {
            // Inside a name.
            self.out.push(b'.');
            return dot;
        }
        match classify_after_dot(self.input, i, dot) {
            Dot::NotDirectory => {
                self.out.push(b'.');
                dot
            }
            Dot::Current(more) => dot + more,
            Dot::Up(more) => {
                self.back_up_to_previous_slash();
                if self
                    .last_invalid_percent
                    .is_some_and(|at| at >= self.out.len())
                {
                    self.last_invalid_percent = None;
                }
                dot + more
            }
        }
    }

    /// A `%` at `i` that is not `%2e`; returns the input bytes consumed.
    fn percent(&mut self, i: usize) -> usize {
        let Some(value) = decode_escape(self.input, i) else {
            // Not an escape: kept as a bare `%`, as browsers do.
            self.last_invalid_percent = Some(self.out.len());
            self.out.push(b'%');
            return 1;
        };
        match class(value) {
            Class::Unescape => {
                self.out.push(value);
                if self
                    .last_invalid_percent
                    .is_some_and(|at| at + 3 >= self.out.len())
                {
                    self.repair_nested_escape(i + 3);
                }
            }
            class => {
                // Kept exactly, hex case included: some servers care.
                self.out.extend_from_slice(&self.input[i..i + 3]);
                if class == Class::Invalid {
                    self.valid = false;
                }
            }
        }
        3
    }

    fn push_escaped(&mut self, b: u8) {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        self.out
            .extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
    }

    /// Removes the last segment: `out` ends with `/`; cut back to just after the slash
    /// before it. At the root nothing is removed (`/..` is `/`).
    fn back_up_to_previous_slash(&mut self) {
        let mut i = self.out.len() - 1;
        if i == 0 {
            return;
        }
        i -= 1;
        while self.out[i] != b'/' && i > 0 {
            i -= 1;
        }
        self.out.truncate(i + 1);
    }

    /// A character was just decoded near a bare `%` written earlier: if together they now
    /// read as an escape (`%%30` → `%0`), the earlier `%` is escaped as `%25`, so that a
    /// second decoding cannot produce what the first one refused.
    fn repair_nested_escape(&mut self, next_input: usize) {
        let Some(at) = self.last_invalid_percent else {
            return;
        };
        let len = self.out.len();
        let append = at + 2 == len;
        if append {
            match self.input.get(next_input) {
                Some(&b) if b < 0x80 => self.out.push(b),
                _ => return,
            }
        }
        if decode_escape(&self.out, at).is_none() {
            if append {
                self.out.truncate(len);
            }
            return;
        }
        // `%XY` → `%25XY`; the byte borrowed from the input is given back to it.
        let tail: Vec<u8> = self.out[at + 1..len].to_vec();
        self.out.truncate(at);
        self.out.extend_from_slice(b"%25");
        self.out.extend_from_slice(&tail);
    }
}

/// 1 for `.`, 3 for `%2e` / `%2E` at `i`, else 0.
fn dot_len(input: &[u8], i: usize) -> usize {
    match input.get(i..) {
        Some([b'.', ..]) => 1,
        Some([b'%', b'2', b'e' | b'E', ..]) => 3,
        _ => 0,
    }
}

/// The value of the escape `%XY` at `i`, if it is one.
fn decode_escape(input: &[u8], i: usize) -> Option<u8> {
    let hex = |b: u8| (b as char).to_digit(16);
    match input.get(i..i + 3)? {
        [b'%', x, y] => Some((hex(*x)? * 16 + hex(*y)?) as u8),
        _ => None,
    }
}

fn is_slash(b: u8) -> bool {
    b == b'/' || b == b'\\'
}

/// What follows a dot that starts a segment. Chromium's `ClassifyAfterDot`, with what Envoy
/// 1.40 adds for literal dots followed by `;` (path parameters, as Tomcat reads `..;x`) right
/// after a literal `/` of the input (not a `\` turned into one): the segment is a dot
/// segment and runs to the next `/` (which it takes) or the end.
fn classify_after_dot(input: &[u8], i: usize, dot: usize) -> Dot {
    let end = input.len();
    let after = i + dot;
    let literal = dot == 1 && i > 0 && input[i - 1] == b'/';
    // The rest of a `;params` segment, and the `/` that ends it.
    let params = |from: usize| {
        input[from..]
            .iter()
            .position(|b| *b == b'/')
            .map_or(end - from, |p| p + 1)
    };
    if after == end {
        return Dot::Current(0);
    }
    if is_slash(input[after]) {
        return Dot::Current(1);
    }
    if literal && input[after] == b';' {
        return Dot::Current(params(after));
    }
    let second = dot_len(input, after);
    if second > 0 {
        let after_second = after + second;
        if after_second == end {
            return Dot::Up(second);
        }
        if is_slash(input[after_second]) {
            return Dot::Up(second + 1);
        }
        if literal && second == 1 && input[after_second] == b';' {
            return Dot::Up(second + params(after_second));
        }
    }
    Dot::NotDirectory
}

#[cfg(test)]
mod tests;
