//! HTTP `Accept` header parsing (RFC 9110 §12.5.1) and DICOMweb content
//! negotiation (PS3.18 §8.7).
//!
//! Parsing: [`parse_accept`] turns one or more `Accept` header lines (or the
//! PS3.18 `accept` query parameter) into [`MediaRange`]s, sorted by weight,
//! then specificity, then original order.
//!
//! Negotiation: a route lists what it can produce as [`Offer`]s, most
//! preferred first (the first offer is the route's default, and what `*/*`,
//! `multipart/*` and a `multipart/related` without `type` get), and
//! [`negotiate`] picks one, or answers [`ApiError::NotAcceptable`].
//!
//! How an offer's quality is computed (RFC 9110 §12.5.1): for each candidate
//! (offer, transfer syntax) the *most specific* range that covers it gives
//! its weight, so `image/*, image/png;q=0` never picks PNG. Among candidates
//! of equal weight, the one picked by the more specific range wins (the
//! client named it), then the earlier offer (server preference), then the
//! earlier range.
//!
//! Transfer syntaxes (PS3.18 §8.7.3.5.2): `transfer-syntax=*` lets the server
//! choose (the first syntax the offer lists, normally the original); a UID is
//! met only if the offer can produce it; no parameter means the PS3.18
//! default for the part's media type (Explicit VR Little Endian for
//! `application/dicom` and `application/octet-stream`), which a non-
//! transcoding archive meets only when the stored object already is in it;
//! hence [`Offer::lenient_default_syntax`] (on by default): a missing
//! parameter is also met by the original, as dicomweb-client and OHIF expect.
//! A range that does not name the part type (`*/*`, `multipart/*`,
//! `multipart/related` without `type`) without a transfer-syntax parameter
//! lets the server choose.

use std::cmp::Reverse;
use std::fmt;

use axum::http::HeaderMap;
use axum::http::header::ACCEPT;

use crate::error::ApiError;

/// Explicit VR Little Endian, the PS3.18 default transfer syntax.
pub const EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1";

/// One alternative of an `Accept` header: `type/subtype;name=value;q=0.5`.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaRange {
    /// Lowercased type, or `*`.
    pub type_: String,
    /// Lowercased subtype, or `*`.
    pub subtype: String,
    /// Parameters other than `q`, in order: lowercased names, unquoted and
    /// unescaped values (case kept).
    pub params: Vec<(String, String)>,
    /// Weight in 0..=1, with at most 3 decimals; 0 means "not acceptable".
    pub q: f32,
}

impl MediaRange {
    /// A range `type/subtype` with no parameters and weight 1 (lowercased).
    pub fn new(type_: &str, subtype: &str) -> Self {
        MediaRange {
            type_: type_.to_ascii_lowercase(),
            subtype: subtype.to_ascii_lowercase(),
            params: Vec::new(),
            q: 1.0,
        }
    }

    /// The value of parameter `name` (case-insensitive), the first if repeated.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether this range covers the media type `type_/subtype`
    /// (case-insensitive; `*/*` and `type/*` are wildcards). Parameters are
    /// not considered.
    pub fn matches(&self, type_: &str, subtype: &str) -> bool {
        wildcard_match(&self.type_, &self.subtype, type_, subtype)
    }

    /// 0 for `*/*`, 1 for `type/*`, 2 for `type/subtype`.
    pub fn level(&self) -> u8 {
        match (self.type_.as_str(), self.subtype.as_str()) {
            ("*", _) => 0,
            (_, "*") => 1,
            _ => 2,
        }
    }

    /// Whether the weight is above zero.
    pub fn is_acceptable(&self) -> bool {
        self.q > 0.0
    }

    /// The `type` parameter of a `multipart/...` range, as (type, subtype),
    /// lowercased; anything after a `;` inside the value is ignored.
    fn part_type(&self) -> Option<(String, String)> {
        let v = self.param("type")?;
        let essence = v
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        // A value without `/` matches nothing (empty subtype), rather than
        // being taken as "no type".
        let (t, s) = essence.split_once('/').unwrap_or((essence.as_str(), ""));
        Some((t.trim().to_string(), s.trim().to_string()))
    }

    /// The `transfer-syntax` parameter, trimmed, if present and not empty.
    fn transfer_syntax(&self) -> Option<&str> {
        self.param("transfer-syntax")
            .map(str::trim)
            .filter(|v| !v.is_empty())
    }

    fn q_millis(&self) -> u16 {
        // Always built from thousandths by the parser; clamp for hand-built ones.
        (self.q.clamp(0.0, 1.0) * 1000.0).round() as u16
    }
}

/// Writes the range back in header syntax: values that are not tokens are
/// quoted (with `\` escapes), `;q=` only when the weight is not 1.
impl fmt::Display for MediaRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.type_, self.subtype)?;
        for (name, value) in &self.params {
            if !value.is_empty() && value.chars().all(is_tchar) {
                write!(f, ";{name}={value}")?;
            } else {
                write!(f, ";{name}=\"")?;
                for c in value.chars() {
                    if c == '"' || c == '\\' {
                        f.write_str("\\")?;
                    }
                    write!(f, "{c}")?;
                }
                f.write_str("\"")?;
            }
        }
        let millis = self.q_millis();
        if millis != 1000 {
            let s = format!("{:.3}", f32::from(millis) / 1000.0);
            write!(f, ";q={}", s.trim_end_matches('0').trim_end_matches('.'))?;
        }
        Ok(())
    }
}

fn wildcard_match(rt: &str, rs: &str, t: &str, s: &str) -> bool {
    (rt == "*" || rt.eq_ignore_ascii_case(t)) && (rs == "*" || rs.eq_ignore_ascii_case(s))
}

/// RFC 9110 `tchar`.
fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

fn bad(msg: impl fmt::Display) -> ApiError {
    ApiError::BadRequest(format!("malformed Accept: {msg}"))
}

/// Parses `Accept` header values (each may hold several comma-separated
/// alternatives) into ranges sorted by q desc, specificity desc, then original
/// order. No values, or only empty ones, give `*/*`. Malformed syntax
/// (missing type or subtype, bad `q`, unterminated quoted string, stray
/// characters) is [`ApiError::BadRequest`]; empty elements, trailing commas
/// and `;`, and whitespace around `=` are tolerated.
pub fn parse_accept(header_values: &[&str]) -> Result<Vec<MediaRange>, ApiError> {
    let mut ranges = Vec::new();
    for value in header_values {
        Parser::new(value).parse_into(&mut ranges)?;
    }
    if ranges.is_empty() {
        ranges.push(MediaRange::new("*", "*"));
    }
    sort_ranges(&mut ranges);
    Ok(ranges)
}

/// Stable sort: q desc, then level desc, then number of parameters desc.
fn sort_ranges(ranges: &mut [MediaRange]) {
    ranges.sort_by_key(|r| {
        (
            Reverse(r.q_millis()),
            Reverse(r.level()),
            Reverse(r.params.len()),
        )
    });
}

struct Parser<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
}

impl<'a> Parser<'a> {
    fn new(s: &'a str) -> Self {
        Parser {
            chars: s.chars().peekable(),
        }
    }

    fn skip_ows(&mut self) {
        while matches!(self.chars.peek(), Some(' ' | '\t')) {
            self.chars.next();
        }
    }

    fn token(&mut self) -> String {
        let mut out = String::new();
        while let Some(&c) = self.chars.peek() {
            if !is_tchar(c) {
                break;
            }
            out.push(c);
            self.chars.next();
        }
        out
    }

    fn parse_into(&mut self, out: &mut Vec<MediaRange>) -> Result<(), ApiError> {
        loop {
            // Empty elements and stray commas: `a/b, , c/d,`.
            while matches!(self.chars.peek(), Some(' ' | '\t' | ',')) {
                self.chars.next();
            }
            if self.chars.peek().is_none() {
                return Ok(());
            }
            out.push(self.range()?);
            self.skip_ows();
            match self.chars.next() {
                None | Some(',') => {}
                Some(c) => return Err(bad(format!("unexpected {c:?} after a media range"))),
            }
        }
    }

    fn range(&mut self) -> Result<MediaRange, ApiError> {
        let type_ = self.token().to_ascii_lowercase();
        if type_.is_empty() {
            return Err(bad("a media range has no type"));
        }
        if self.chars.next() != Some('/') {
            return Err(bad(format!("{type_:?} has no subtype")));
        }
        let subtype = self.token().to_ascii_lowercase();
        if subtype.is_empty() {
            return Err(bad(format!("{type_}/ has no subtype")));
        }
        if type_ == "*" && subtype != "*" {
            return Err(bad(format!("*/{subtype} is not a media range")));
        }
        let mut range = MediaRange {
            type_,
            subtype,
            params: Vec::new(),
            q: 1.0,
        };
        let mut seen_q = false;
        loop {
            self.skip_ows();
            if self.chars.peek() != Some(&';') {
                return Ok(range);
            }
            self.chars.next();
            self.skip_ows();
            if matches!(self.chars.peek(), None | Some(';' | ',')) {
                continue; // empty parameter: `a/b;` or `a/b;;c=d`
            }
            let name = self.token().to_ascii_lowercase();
            if name.is_empty() {
                return Err(bad("a parameter has no name"));
            }
            self.skip_ows();
            if self.chars.next() != Some('=') {
                return Err(bad(format!("parameter {name:?} has no value")));
            }
            self.skip_ows();
            let value = self.value()?;
            if name == "q" {
                if seen_q {
                    return Err(bad("more than one q"));
                }
                seen_q = true;
                range.q = parse_q(&value)?;
            } else {
                range.params.push((name, value));
            }
        }
    }

    /// A token or a quoted string (unquoted, unescaped). Lenient: an unquoted
    /// value may hold `/` and other visible characters (`type=application/dicom`).
    fn value(&mut self) -> Result<String, ApiError> {
        let mut out = String::new();
        if self.chars.peek() == Some(&'"') {
            self.chars.next();
            loop {
                match self.chars.next() {
                    None => return Err(bad("unterminated quoted string")),
                    Some('"') => return Ok(out),
                    Some('\\') => match self.chars.next() {
                        Some(c) if !is_forbidden_control(c) => out.push(c),
                        _ => return Err(bad("bad escape in a quoted string")),
                    },
                    Some(c) if is_forbidden_control(c) => {
                        return Err(bad("control character in a quoted string"));
                    }
                    Some(c) => out.push(c),
                }
            }
        }
        while let Some(&c) = self.chars.peek() {
            if matches!(c, ' ' | '\t' | ';' | ',' | '"') || c.is_control() {
                break;
            }
            out.push(c);
            self.chars.next();
        }
        if out.is_empty() {
            return Err(bad("a parameter has an empty value"));
        }
        Ok(out)
    }
}

/// Control characters other than horizontal tab (not allowed in quoted strings).
fn is_forbidden_control(c: char) -> bool {
    c.is_control() && c != '\t'
}

/// RFC 9110 qvalue: `0[.ddd]` or `1[.000]`.
fn parse_q(s: &str) -> Result<f32, ApiError> {
    let err = || bad(format!("bad weight q={s:?}"));
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, f),
        None => (s, ""),
    };
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err());
    }
    let mut millis: u16 = 0;
    for (i, b) in frac.bytes().enumerate() {
        millis += u16::from(b - b'0') * [100, 10, 1][i];
    }
    match int {
        "0" => Ok(f32::from(millis) / 1000.0),
        "1" if millis == 0 => Ok(1.0),
        _ => Err(err()),
    }
}

/// The ranges of a request: the PS3.18 `accept` query parameter if given and
/// not empty (it overrides the header), else the `Accept` header lines.
/// In the query value a `+` that form decoding turned into a space
/// (`application/dicom json`) is restored when that is the only way the value
/// parses. A header value that is not visible ASCII is a [`ApiError::BadRequest`].
pub fn request_ranges(
    headers: &HeaderMap,
    query_accept: Option<&str>,
) -> Result<Vec<MediaRange>, ApiError> {
    if let Some(q) = query_accept.filter(|q| !q.trim().is_empty()) {
        return parse_accept(&[q]).or_else(|e| {
            let repaired = repair_form_plus(q);
            if repaired == q {
                Err(e)
            } else {
                parse_accept(&[repaired.as_str()]).map_err(|_| e)
            }
        });
    }
    let mut values = Vec::new();
    for v in headers.get_all(ACCEPT) {
        values.push(
            v.to_str()
                .map_err(|_| bad("the header is not visible ASCII"))?,
        );
    }
    parse_accept(&values)
}

/// Turns spaces between two token characters back into `+` (outside quotes).
fn repair_form_plus(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut quoted = false;
    let mut escaped = false;
    for (i, &c) in chars.iter().enumerate() {
        if quoted {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                quoted = false;
            }
            out.push(c);
            continue;
        }
        if c == '"' {
            quoted = true;
        }
        let between_tokens = c == ' '
            && i > 0
            && chars.get(i - 1).is_some_and(|&p| is_tchar(p))
            && chars.get(i + 1).is_some_and(|&n| is_tchar(n));
        out.push(if between_tokens { '+' } else { c });
    }
    out
}

/// A transfer syntax an [`Offer`] can produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferSyntaxOffer {
    /// The object as stored, which is in this transfer syntax.
    Original(String),
    /// The route can transcode to this transfer syntax.
    Transcode(String),
}

impl TransferSyntaxOffer {
    /// The transfer syntax UID this produces.
    pub fn uid(&self) -> &str {
        match self {
            TransferSyntaxOffer::Original(u) | TransferSyntaxOffer::Transcode(u) => u,
        }
    }

    fn choice(&self) -> Option<String> {
        match self {
            TransferSyntaxOffer::Original(_) => None,
            TransferSyntaxOffer::Transcode(u) => Some(u.clone()),
        }
    }
}

/// One representation a route can produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// The media type of the body, or of each part when `multipart`, e.g.
    /// `application/dicom`, `application/dicom+json`, `image/jpeg`.
    pub media_type: String,
    /// Whether the answer is `multipart/related; type="<media_type>"`.
    pub multipart: bool,
    /// The transfer syntaxes it can produce, preferred first (the first is
    /// what `transfer-syntax=*` gets). Empty: transfer syntax does not apply
    /// (JSON, rendered images), and a `transfer-syntax` parameter is ignored.
    pub transfer_syntaxes: Vec<TransferSyntaxOffer>,
    /// Leniency (default true): a range that names the part type but has no
    /// `transfer-syntax` parameter is met by the first listed syntax even when
    /// the PS3.18 default (e.g. Explicit VR Little Endian) cannot be produced.
    pub lenient_default_syntax: bool,
}

impl Offer {
    /// A single-part offer of `media_type` with no transfer syntax.
    pub fn single(media_type: &str) -> Self {
        Offer {
            media_type: media_type.to_ascii_lowercase(),
            multipart: false,
            transfer_syntaxes: Vec::new(),
            lenient_default_syntax: true,
        }
    }

    /// A `multipart/related; type="<media_type>"` offer with no transfer syntax.
    pub fn multipart(media_type: &str) -> Self {
        Offer {
            multipart: true,
            ..Offer::single(media_type)
        }
    }

    /// Adds [`TransferSyntaxOffer::Original`]`(uid)`: the stored object's syntax.
    pub fn original(mut self, uid: &str) -> Self {
        self.transfer_syntaxes
            .push(TransferSyntaxOffer::Original(uid.trim().to_string()));
        self
    }

    /// Adds [`TransferSyntaxOffer::Transcode`]`(uid)`: a syntax the route can transcode to.
    pub fn transcode(mut self, uid: &str) -> Self {
        self.transfer_syntaxes
            .push(TransferSyntaxOffer::Transcode(uid.trim().to_string()));
        self
    }

    /// Sets [`Offer::lenient_default_syntax`].
    pub fn lenient_default_syntax(mut self, lenient: bool) -> Self {
        self.lenient_default_syntax = lenient;
        self
    }

    fn type_subtype(&self) -> (&str, &str) {
        self.media_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .split_once('/')
            .unwrap_or((self.media_type.as_str(), ""))
    }

    /// The syntax offer producing `uid`, if any (an original one first).
    fn find_syntax(&self, uid: &str) -> Option<&TransferSyntaxOffer> {
        let uid = uid.trim();
        self.transfer_syntaxes
            .iter()
            .find(|t| matches!(t, TransferSyntaxOffer::Original(u) if u == uid))
            .or_else(|| self.transfer_syntaxes.iter().find(|t| t.uid() == uid))
    }
}

/// What [`negotiate`] picked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// Index of the chosen offer in the `offers` slice.
    pub offer: usize,
    /// The offer's media type (the part type when `multipart`).
    pub media_type: String,
    /// Whether to answer `multipart/related`.
    pub multipart: bool,
    /// `None`: send as stored (the original transfer syntax, or not
    /// applicable); `Some(uid)`: transcode to `uid`.
    pub transfer_syntax: Option<String>,
}

/// The PS3.18 default transfer syntax when a range names `media_type`
/// without a `transfer-syntax` parameter (Tables 8.7.3-2, -4, -5); `None` when
/// PS3.18 gives none (JSON, rendered media types).
pub fn default_transfer_syntax(media_type: &str) -> Option<&'static str> {
    match media_type.trim().to_ascii_lowercase().as_str() {
        "application/dicom" | "application/octet-stream" => Some(EXPLICIT_VR_LITTLE_ENDIAN),
        "image/jpeg" => Some("1.2.840.10008.1.2.4.70"),
        "image/dicom-rle" => Some("1.2.840.10008.1.2.5"),
        "image/jls" => Some("1.2.840.10008.1.2.4.80"),
        "image/jp2" => Some("1.2.840.10008.1.2.4.90"),
        "image/jpx" => Some("1.2.840.10008.1.2.4.92"),
        _ => None,
    }
}

/// Whether `range` covers `offer`'s media type (and part type): its
/// specificity for that offer (level, 1 if it has a `type` parameter that
/// counts), and whether it names the part type without wildcards.
fn media_fit(range: &MediaRange, offer: &Offer) -> Option<(u8, u8, bool)> {
    let (ot, os) = offer.type_subtype();
    let mut extra = 0;
    let names_part_type;
    if offer.multipart {
        if !range.matches("multipart", "related") {
            return None;
        }
        match range.part_type() {
            Some((t, s)) if range.type_ == "multipart" => {
                if !wildcard_match(&t, &s, ot, os) {
                    return None;
                }
                extra += 1;
                names_part_type = t != "*" && s != "*";
            }
            _ => names_part_type = false,
        }
    } else {
        if !range.matches(ot, os) {
            return None;
        }
        names_part_type = range.level() == 2;
    }
    Some((range.level(), extra, names_part_type))
}

/// How `range` meets `offer`: its specificity there and the syntaxes it
/// accepts, in the offer's order (`[None]` when the offer has no syntaxes);
/// `None` when it does not meet it.
type Fit<'o> = ((u8, u8), Vec<Option<&'o TransferSyntaxOffer>>);

fn fit<'o>(range: &MediaRange, offer: &'o Offer) -> Option<Fit<'o>> {
    let (level, mut extra, names_part_type) = media_fit(range, offer)?;
    if offer.transfer_syntaxes.is_empty() {
        return Some(((level, extra), vec![None]));
    }
    let any = || offer.transfer_syntaxes.iter().map(Some).collect();
    let syntaxes = match range.transfer_syntax() {
        Some("*") => any(),
        Some(uid) => {
            extra += 1;
            vec![Some(offer.find_syntax(uid)?)]
        }
        None if !names_part_type => any(),
        None => {
            let (ot, os) = offer.type_subtype();
            let default = default_transfer_syntax(&format!("{ot}/{os}"));
            match default.and_then(|uid| offer.find_syntax(uid)) {
                Some(t) => vec![Some(t)],
                None if offer.lenient_default_syntax || default.is_none() => any(),
                None => return None,
            }
        }
    };
    Some(((level, extra), syntaxes))
}

/// Whether `range` covers the representation (offer, syntax) for the
/// purpose of weighting it, and how specifically. A range without a
/// transfer-syntax parameter (or with `*`) covers every syntax.
fn covers(
    range: &MediaRange,
    offer: &Offer,
    syntax: Option<&TransferSyntaxOffer>,
) -> Option<(u8, u8)> {
    let (level, mut extra, _) = media_fit(range, offer)?;
    if let (Some(chosen), false) = (syntax, offer.transfer_syntaxes.is_empty()) {
        match range.transfer_syntax() {
            None | Some("*") => {}
            Some(uid) => {
                if uid != chosen.uid() {
                    return None;
                }
                extra += 1;
            }
        }
    }
    Some((level, extra))
}

/// Picks the best offer for the ranges (see the module docs for the rules),
/// or [`ApiError::NotAcceptable`] when none fits with a weight above zero.
pub fn negotiate(ranges: &[MediaRange], offers: &[Offer]) -> Result<Choice, ApiError> {
    // Sort key of the best candidate so far, and its syntax.
    type Key = (Reverse<u16>, Reverse<(u8, u8)>, usize, usize, usize);
    let mut best: Option<(Key, Option<&TransferSyntaxOffer>)> = None;
    for (ri, range) in ranges.iter().enumerate() {
        if !range.is_acceptable() {
            continue;
        }
        for (oi, offer) in offers.iter().enumerate() {
            let Some((spec, syntaxes)) = fit(range, offer) else {
                continue;
            };
            for (si, syntax) in syntaxes.into_iter().enumerate() {
                let q = effective_q(ranges, offer, syntax);
                if q == 0 {
                    continue;
                }
                let key = (Reverse(q), Reverse(spec), oi, ri, si);
                if best.as_ref().is_none_or(|(k, _)| key < *k) {
                    best = Some((key, syntax));
                }
            }
        }
    }
    match best {
        Some(((_, _, oi, _, _), syntax)) => {
            let offer = &offers[oi];
            Ok(Choice {
                offer: oi,
                media_type: offer.media_type.clone(),
                multipart: offer.multipart,
                transfer_syntax: syntax.and_then(TransferSyntaxOffer::choice),
            })
        }
        None => Err(ApiError::NotAcceptable(format!(
            "none of {} can be produced; available: {}",
            describe_ranges(ranges),
            describe_offers(offers)
        ))),
    }
}

/// The weight of (offer, syntax) in thousandths: that of the most specific
/// covering range; among equally specific ones the lowest (so a q=0
/// exclusion sticks). 0 when no range covers it.
fn effective_q(ranges: &[MediaRange], offer: &Offer, syntax: Option<&TransferSyntaxOffer>) -> u16 {
    let mut weight: Option<((u8, u8), u16)> = None;
    for range in ranges {
        if let Some(spec) = covers(range, offer, syntax) {
            let q = range.q_millis();
            weight = match weight {
                Some((s, w)) if s > spec || (s == spec && w <= q) => Some((s, w)),
                _ => Some((spec, q)),
            };
        }
    }
    weight.map_or(0, |(_, w)| w)
}

/// [`request_ranges`] then [`negotiate`]: the one call a route makes.
pub fn negotiate_request(
    headers: &HeaderMap,
    query_accept: Option<&str>,
    offers: &[Offer],
) -> Result<Choice, ApiError> {
    negotiate(&request_ranges(headers, query_accept)?, offers)
}

fn describe_ranges(ranges: &[MediaRange]) -> String {
    let all: Vec<String> = ranges.iter().map(ToString::to_string).collect();
    let mut s = all.join(", ");
    if s.len() > 300 {
        let mut cut = 300;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

fn describe_offers(offers: &[Offer]) -> String {
    let all: Vec<String> = offers
        .iter()
        .map(|o| {
            let mut s = if o.multipart {
                format!("multipart/related; type=\"{}\"", o.media_type)
            } else {
                o.media_type.clone()
            };
            if !o.transfer_syntaxes.is_empty() {
                let uids: Vec<&str> = o
                    .transfer_syntaxes
                    .iter()
                    .map(TransferSyntaxOffer::uid)
                    .collect();
                s.push_str(&format!("; transfer-syntax={}", uids.join("|")));
            }
            s
        })
        .collect();
    all.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const ELE: &str = EXPLICIT_VR_LITTLE_ENDIAN;
    const JPEG_BASELINE: &str = "1.2.840.10008.1.2.4.50";

    fn parse(s: &str) -> Vec<MediaRange> {
        parse_accept(&[s]).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn is_bad(s: &str) -> bool {
        matches!(parse_accept(&[s]), Err(ApiError::BadRequest(_)))
    }

    fn pick(accept: &str, offers: &[Offer]) -> Result<Choice, ApiError> {
        negotiate(&parse(accept), offers)
    }

    fn dicom_offers(stored: &str) -> Vec<Offer> {
        vec![Offer::multipart("application/dicom").original(stored)]
    }

    // ---- parsing ----

    #[test]
    fn parses_types_params_and_weights() {
        let r = parse("Text/HTML;Level=1;q=0.5");
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].type_, "text");
        assert_eq!(r[0].subtype, "html");
        assert_eq!(r[0].params, vec![("level".into(), "1".into())]);
        assert_eq!(r[0].q, 0.5);
        assert_eq!(r[0].param("LEVEL"), Some("1"));
        assert_eq!(r[0].param("other"), None);
    }

    #[test]
    fn quoted_values_are_unquoted_and_unescaped() {
        let r = parse(r#"multipart/related; type="application/dicom"; x="a \"b\" \\ c, d;e""#);
        assert_eq!(r[0].param("type"), Some("application/dicom"));
        assert_eq!(r[0].param("x"), Some(r#"a "b" \ c, d;e"#));
    }

    #[test]
    fn absent_or_empty_is_everything() {
        for values in [&[][..], &[""], &["  ", " , ,"]] {
            let r = parse_accept(values).unwrap();
            assert_eq!(r, vec![MediaRange::new("*", "*")]);
        }
    }

    #[test]
    fn several_header_lines_are_joined() {
        let r = parse_accept(&["image/png;q=0.5", "image/jpeg"]).unwrap();
        assert_eq!(r[0].subtype, "jpeg");
        assert_eq!(r[1].subtype, "png");
    }

    #[test]
    fn sorted_by_weight_then_specificity_then_order() {
        let r = parse(
            "*/*;q=0.1, image/*, image/png;q=0.9, text/plain, image/jpeg, text/plain;format=flowed",
        );
        let got: Vec<String> = r.iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            [
                "text/plain;format=flowed",
                "text/plain",
                "image/jpeg",
                "image/*",
                "image/png;q=0.9",
                "*/*;q=0.1"
            ]
        );
    }

    #[test]
    fn lenient_with_sloppy_clients() {
        let r = parse(
            " ,image/png , ,image/jpeg;; q = 0.5 ;, multipart/related ; type = application/dicom ,",
        );
        assert_eq!(r.len(), 3);
        assert_eq!(r[2].subtype, "jpeg");
        assert_eq!(r[2].q, 0.5);
        assert_eq!(r[0].param("type"), Some("application/dicom"));
        assert_eq!(parse("image/png;Q=0")[0].q, 0.0);
        assert_eq!(parse("a/b;q=1.000")[0].q, 1.0);
        assert_eq!(parse("a/b;q=0.")[0].q, 0.0);
        assert_eq!(parse("a/b;q=0.125")[0].q, 0.125);
        assert_eq!(parse("a/b;q=\"0.5\"")[0].q, 0.5);
    }

    #[test]
    fn strict_where_it_matters() {
        for s in [
            "image",
            "image/",
            "/png",
            "*/png",
            "image /png",
            "image/png foo",
            "image/png;q=2",
            "image/png;q=1.5",
            "image/png;q=0.1234",
            "image/png;q=-0",
            "image/png;q=.5",
            "image/png;q=abc",
            "image/png;q=",
            "image/png;q=0.5;q=0.5",
            "image/png;level",
            "image/png;=1",
            "image/png;x=\"unterminated",
            "image/png;x=\"bad\u{1}\"",
            "ïmage/png",
            "image/png\u{0}",
        ] {
            assert!(is_bad(s), "{s:?} should be a bad request");
        }
    }

    #[test]
    fn display_round_trips() {
        let s = r#"multipart/related;type=application/dicom;x="a \"b\"";y="";q=0.25"#;
        let r = parse(s);
        assert_eq!(
            r[0].to_string(),
            s.replace("type=application/dicom", "type=\"application/dicom\"")
        );
        assert_eq!(parse(&r[0].to_string()), r);
    }

    #[test]
    fn matches_with_wildcards() {
        assert!(MediaRange::new("*", "*").matches("image", "png"));
        assert!(MediaRange::new("image", "*").matches("IMAGE", "png"));
        assert!(!MediaRange::new("image", "*").matches("text", "png"));
        assert!(MediaRange::new("image", "png").matches("image", "PNG"));
        assert!(!MediaRange::new("image", "png").matches("image", "jpeg"));
    }

    #[test]
    fn query_parameter_overrides_header() {
        let mut h = HeaderMap::new();
        h.insert(ACCEPT, "image/png".parse().unwrap());
        let offers = [Offer::single("image/jpeg"), Offer::single("image/png")];
        assert_eq!(negotiate_request(&h, None, &offers).unwrap().offer, 1);
        assert_eq!(
            negotiate_request(&h, Some("image/jpeg"), &offers)
                .unwrap()
                .offer,
            0
        );
        assert_eq!(negotiate_request(&h, Some(""), &offers).unwrap().offer, 1);
        assert!(matches!(
            negotiate_request(&h, Some("image/"), &offers),
            Err(ApiError::BadRequest(_))
        ));
        // No header, no query: */* -> first offer.
        assert_eq!(
            negotiate_request(&HeaderMap::new(), None, &offers)
                .unwrap()
                .offer,
            0
        );
    }

    #[test]
    fn query_parameter_plus_decoded_as_space_is_repaired() {
        let r = request_ranges(
            &HeaderMap::new(),
            Some("application/dicom json, application/json;q=0.5"),
        )
        .unwrap();
        assert_eq!(r[0].subtype, "dicom+json");
        assert_eq!(r[1].subtype, "json");
    }

    #[test]
    fn non_ascii_header_is_bad_request() {
        let mut h = HeaderMap::new();
        h.insert(
            ACCEPT,
            axum::http::HeaderValue::from_bytes(b"image/\xe9").unwrap(),
        );
        assert!(matches!(
            request_ranges(&h, None),
            Err(ApiError::BadRequest(_))
        ));
    }

    // ---- negotiation: WADO-RS instances ----

    #[test]
    fn transfer_syntax_star_gives_original() {
        let c = pick(
            r#"multipart/related; type="application/dicom"; transfer-syntax=*"#,
            &dicom_offers(JPEG_BASELINE),
        )
        .unwrap();
        assert_eq!(
            c,
            Choice {
                offer: 0,
                media_type: "application/dicom".into(),
                multipart: true,
                transfer_syntax: None
            }
        );
    }

    #[test]
    fn explicit_syntax_only_if_producible() {
        let accept =
            format!(r#"multipart/related; type="application/dicom"; transfer-syntax={ELE}"#);
        // Stored as explicit LE: the original meets it.
        assert_eq!(
            pick(&accept, &dicom_offers(ELE)).unwrap().transfer_syntax,
            None
        );
        // Stored as JPEG, no transcoding: 406.
        assert!(matches!(
            pick(&accept, &dicom_offers(JPEG_BASELINE)),
            Err(ApiError::NotAcceptable(_))
        ));
        // Stored as JPEG, the route can transcode.
        let offers = [Offer::multipart("application/dicom")
            .original(JPEG_BASELINE)
            .transcode(ELE)];
        assert_eq!(
            pick(&accept, &offers).unwrap().transfer_syntax.as_deref(),
            Some(ELE)
        );
    }

    #[test]
    fn unavailable_syntax_falls_to_next_alternative() {
        let accept = format!(
            r#"multipart/related; type="application/dicom"; transfer-syntax={ELE}, multipart/related; type="application/dicom"; transfer-syntax={JPEG_BASELINE}; q=0.5"#
        );
        let c = pick(&accept, &dicom_offers(JPEG_BASELINE)).unwrap();
        assert!(c.multipart);
        assert_eq!(c.transfer_syntax, None);
        let accept = "multipart/related; type=\"application/dicom\"; transfer-syntax=1.2.3, application/dicom+json";
        assert!(pick(accept, &dicom_offers(JPEG_BASELINE)).is_err());
    }

    #[test]
    fn missing_syntax_is_default_or_lenient() {
        let accept = r#"multipart/related; type="application/dicom""#;
        // Original is the PS3.18 default: fine either way.
        let strict_ele = [Offer::multipart("application/dicom")
            .original(ELE)
            .lenient_default_syntax(false)];
        assert_eq!(pick(accept, &strict_ele).unwrap().transfer_syntax, None);
        // Original is JPEG: only with the leniency (the default).
        assert_eq!(
            pick(accept, &dicom_offers(JPEG_BASELINE))
                .unwrap()
                .transfer_syntax,
            None
        );
        let strict = [Offer::multipart("application/dicom")
            .original(JPEG_BASELINE)
            .lenient_default_syntax(false)];
        assert!(matches!(
            pick(accept, &strict),
            Err(ApiError::NotAcceptable(_))
        ));
        // Strict but transcodable: the default syntax is produced.
        let transcoding = [Offer::multipart("application/dicom")
            .original(JPEG_BASELINE)
            .transcode(ELE)
            .lenient_default_syntax(false)];
        assert_eq!(
            pick(accept, &transcoding)
                .unwrap()
                .transfer_syntax
                .as_deref(),
            Some(ELE)
        );
        // Wildcards let the server choose even when strict.
        for accept in ["*/*", "multipart/*", "multipart/related"] {
            assert_eq!(
                pick(accept, &strict).unwrap().transfer_syntax,
                None,
                "{accept}"
            );
        }
    }

    #[test]
    fn offers_are_lenient_by_default() {
        assert!(Offer::single("image/png").lenient_default_syntax);
        assert!(Offer::multipart("application/dicom").lenient_default_syntax);
    }

    #[test]
    fn type_parameter_quoted_or_unquoted() {
        for accept in [
            r#"multipart/related; type="application/dicom""#,
            "multipart/related;type=application/dicom",
            "multipart/related; TYPE=\"Application/DICOM\"",
        ] {
            assert!(
                pick(accept, &dicom_offers(ELE)).unwrap().multipart,
                "{accept}"
            );
        }
        assert!(
            pick(
                r#"multipart/related; type="application/pdf""#,
                &dicom_offers(ELE)
            )
            .is_err()
        );
        // A bare application/dicom is not the multipart answer.
        assert!(pick("application/dicom", &dicom_offers(ELE)).is_err());
    }

    #[test]
    fn multipart_without_type_and_wildcards_get_the_default() {
        let offers = [
            Offer::multipart("application/dicom").original(ELE),
            Offer::multipart("application/octet-stream").original(ELE),
            Offer::single("application/dicom").original(ELE),
        ];
        for accept in [
            "multipart/related",
            "multipart/*",
            "*/*",
            "multipart/related; q=0.3",
        ] {
            let c = pick(accept, &offers).unwrap();
            assert_eq!(c.offer, 0, "{accept}");
        }
        let c = pick(
            r#"multipart/related; type="application/octet-stream""#,
            &offers,
        )
        .unwrap();
        assert_eq!(c.offer, 1);
        let c = pick("application/dicom, */*;q=0.5", &offers).unwrap();
        assert_eq!(c.offer, 2);
    }

    // ---- negotiation: metadata / QIDO ----

    #[test]
    fn dicom_json_or_json() {
        let offers = [
            Offer::single("application/dicom+json"),
            Offer::single("application/json"),
        ];
        assert_eq!(pick("application/dicom+json", &offers).unwrap().offer, 0);
        assert_eq!(pick("application/json", &offers).unwrap().offer, 1);
        assert_eq!(pick("*/*", &offers).unwrap().offer, 0);
        assert_eq!(pick("application/*", &offers).unwrap().offer, 0);
        assert_eq!(
            pick("application/json, application/dicom+json;q=0.9", &offers)
                .unwrap()
                .offer,
            1
        );
        assert_eq!(
            pick("application/json;charset=utf-8", &offers)
                .unwrap()
                .offer,
            1
        );
        let e = pick("application/xml", &offers).unwrap_err();
        assert!(matches!(e, ApiError::NotAcceptable(_)));
        assert_eq!(e.status(), axum::http::StatusCode::NOT_ACCEPTABLE);
    }

    // ---- negotiation: rendered / thumbnail ----

    #[test]
    fn rendered_images() {
        let offers = [Offer::single("image/jpeg"), Offer::single("image/png")];
        assert_eq!(pick("image/jpeg", &offers).unwrap().offer, 0);
        assert_eq!(pick("image/png", &offers).unwrap().offer, 1);
        assert_eq!(pick("image/*", &offers).unwrap().offer, 0);
        assert_eq!(pick("*/*", &offers).unwrap().offer, 0);
        // Equal weights: first offer wins.
        assert_eq!(pick("image/png, image/jpeg", &offers).unwrap().offer, 0);
        // Named explicitly beats a wildcard at the same weight.
        assert_eq!(pick("*/*, image/png", &offers).unwrap().offer, 1);
        assert_eq!(
            pick("image/jpeg;q=0.5, image/png", &offers).unwrap().offer,
            1
        );
        // q=0 excludes, even under a wildcard.
        assert_eq!(pick("image/*, image/jpeg;q=0", &offers).unwrap().offer, 1);
        assert_eq!(pick("*/*, image/jpeg;q=0", &offers).unwrap().offer, 1);
        assert!(pick("image/*;q=0", &offers).is_err());
        assert!(pick("image/jpeg;q=0, image/png;q=0", &offers).is_err());
        // A transfer-syntax parameter does not apply to rendered images.
        assert_eq!(
            pick("image/png; transfer-syntax=1.2.3", &offers)
                .unwrap()
                .offer,
            1
        );
        assert!(pick("image/gif", &offers).is_err());
    }

    // ---- negotiation: frames ----

    #[test]
    fn frames() {
        let offers = [
            Offer::multipart("application/octet-stream").original(ELE),
            Offer::multipart("image/jpeg").original(JPEG_BASELINE),
        ];
        let c = pick(
            r#"multipart/related; type="application/octet-stream""#,
            &offers,
        )
        .unwrap();
        assert_eq!((c.offer, c.transfer_syntax), (0, None));
        let c = pick(
            r#"multipart/related; type="application/octet-stream"; transfer-syntax=*"#,
            &offers,
        )
        .unwrap();
        assert_eq!(c.offer, 0);
        let c = pick(
            r#"multipart/related; type="image/jpeg"; transfer-syntax=*"#,
            &offers,
        )
        .unwrap();
        assert_eq!((c.offer, c.media_type.as_str()), (1, "image/jpeg"));
        let c = pick(
            &format!(r#"multipart/related; type="image/jpeg"; transfer-syntax={JPEG_BASELINE}"#),
            &offers,
        )
        .unwrap();
        assert_eq!(c.offer, 1);
        // image/jpeg default (JPEG lossless .70) not stored: lenient original.
        assert_eq!(
            pick(r#"multipart/related; type="image/jpeg""#, &offers)
                .unwrap()
                .offer,
            1
        );
        let strict = [Offer::multipart("image/jpeg")
            .original(JPEG_BASELINE)
            .lenient_default_syntax(false)];
        assert!(pick(r#"multipart/related; type="image/jpeg""#, &strict).is_err());
        // OHIF asks for several at once.
        let c = pick(
            r#"multipart/related; type="image/jls"; transfer-syntax=1.2.840.10008.1.2.4.80, multipart/related; type="application/octet-stream"; transfer-syntax=*"#,
            &offers,
        )
        .unwrap();
        assert_eq!(c.offer, 0);
        assert_eq!(
            pick("multipart/related; type=image/*", &offers)
                .unwrap()
                .offer,
            1
        );
    }

    #[test]
    fn q_zero_on_a_syntax_excludes_only_that_syntax() {
        let offers = [Offer::multipart("application/dicom")
            .original(JPEG_BASELINE)
            .transcode(ELE)];
        let accept = format!(
            r#"multipart/related; type="application/dicom"; transfer-syntax=*, multipart/related; type="application/dicom"; transfer-syntax={JPEG_BASELINE}; q=0"#
        );
        assert_eq!(
            pick(&accept, &offers).unwrap().transfer_syntax.as_deref(),
            Some(ELE)
        );
        let only_original = [Offer::multipart("application/dicom").original(JPEG_BASELINE)];
        assert!(pick(&accept, &only_original).is_err());
        // Excluding the whole type.
        assert!(
            pick(
                r#"*/*, multipart/related; type="application/dicom"; q=0"#,
                &offers
            )
            .is_err()
        );
    }

    #[test]
    fn no_offers_is_not_acceptable() {
        assert!(matches!(pick("*/*", &[]), Err(ApiError::NotAcceptable(_))));
    }

    #[test]
    fn default_syntaxes() {
        assert_eq!(default_transfer_syntax("application/dicom"), Some(ELE));
        assert_eq!(
            default_transfer_syntax("Application/Octet-Stream"),
            Some(ELE)
        );
        assert_eq!(
            default_transfer_syntax("image/jpeg"),
            Some("1.2.840.10008.1.2.4.70")
        );
        assert_eq!(default_transfer_syntax("application/dicom+json"), None);
    }
}
