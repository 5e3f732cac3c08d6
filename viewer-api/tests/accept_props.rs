//! Property tests of `Accept` parsing and DICOMweb negotiation.

use std::cmp::Reverse;

use pacs_viewer_api::ApiError;
use pacs_viewer_api::dicomweb::accept::{MediaRange, Offer, negotiate, parse_accept};
use proptest::prelude::*;
use proptest::test_runner::Config;

const ELE: &str = "1.2.840.10008.1.2.1";
const JPEG: &str = "1.2.840.10008.1.2.4.50";

fn config() -> Config {
    Config {
        cases: 512,
        // Never write regression files into the source tree.
        failure_persistence: None,
        ..Config::default()
    }
}

/// A generated range and the freedom of how to write it.
#[derive(Debug, Clone)]
struct GenRange {
    type_: String,
    subtype: String,
    /// (name, value, quote even if a token, escape every char when quoted)
    params: Vec<(String, String, bool, bool)>,
    /// weight in thousandths; None: no q parameter
    q: Option<(u16, usize)>,
    /// whitespace styles
    ws: (bool, bool),
}

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9][A-Za-z0-9!#$%&'+.^_`|~-]{0,7}"
}

fn media_type() -> impl Strategy<Value = (String, String)> {
    prop_oneof![
        1 => Just(("*".to_string(), "*".to_string())),
        1 => token().prop_map(|t| (t, "*".to_string())),
        6 => (token(), token()),
    ]
}

fn param() -> impl Strategy<Value = (String, String, bool, bool)> {
    let name = token().prop_filter("q is the weight", |n| !n.eq_ignore_ascii_case("q"));
    let value = prop_oneof![token(), "(\\PC|\\t){0,12}", "[\"\\\\a ,;=]{0,6}"];
    (name, value, any::<bool>(), any::<bool>())
}

fn gen_range() -> impl Strategy<Value = GenRange> {
    (
        media_type(),
        proptest::collection::vec(param(), 0..4),
        proptest::option::of((0u16..=1000, 0usize..4)),
        (any::<bool>(), any::<bool>()),
    )
        .prop_map(|((type_, subtype), params, q, ws)| GenRange {
            type_,
            subtype,
            params,
            q,
            ws,
        })
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c))
}

fn render(r: &GenRange) -> String {
    let (sp, eq_sp) = r.ws;
    let semi = if sp { " ; " } else { ";" };
    let eq = if eq_sp { " = " } else { "=" };
    let mut s = format!("{}/{}", r.type_, r.subtype);
    for (name, value, force_quote, escape_all) in &r.params {
        s.push_str(semi);
        s.push_str(name);
        s.push_str(eq);
        if is_token(value) && !force_quote {
            s.push_str(value);
        } else {
            s.push('"');
            for c in value.chars() {
                if *escape_all || c == '"' || c == '\\' {
                    s.push('\\');
                }
                s.push(c);
            }
            s.push('"');
        }
    }
    if let Some((millis, trim)) = r.q {
        // Same weight, written 1 to 3 decimals or none: 0.5, 0.50, 0.500.
        let full = format!("{}.{:03}", millis / 1000, millis % 1000);
        let mut text = full.as_str();
        for _ in 0..trim {
            if let Some(t) = text.strip_suffix('0') {
                text = t;
            }
        }
        let text = if trim == 3 {
            text.trim_end_matches('.')
        } else {
            text
        };
        s.push_str(semi);
        s.push('q');
        s.push_str(eq);
        s.push_str(text);
    }
    s
}

fn expected(ranges: &[GenRange]) -> Vec<MediaRange> {
    let mut out: Vec<(usize, u16, MediaRange)> = ranges
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let millis = r.q.map_or(1000, |(m, _)| m);
            let range = MediaRange {
                type_: r.type_.to_ascii_lowercase(),
                subtype: r.subtype.to_ascii_lowercase(),
                params: r
                    .params
                    .iter()
                    .map(|(n, v, _, _)| (n.to_ascii_lowercase(), v.clone()))
                    .collect(),
                q: f32::from(millis) / 1000.0,
            };
            (i, millis, range)
        })
        .collect();
    out.sort_by_key(|(i, millis, r)| {
        (
            Reverse(*millis),
            Reverse(r.level()),
            Reverse(r.params.len()),
            *i,
        )
    });
    out.into_iter().map(|(_, _, r)| r).collect()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn never_panics_on_arbitrary_text(s in any::<String>(), t in "[a-z*/;=\", \\\\q.0-9\té\u{0}]{0,40}") {
        let _ = parse_accept(&[&s]);
        let _ = parse_accept(&[&t, &s]);
    }

    #[test]
    fn well_formed_headers_parse_back(
        ranges in proptest::collection::vec(gen_range(), 1..6),
        lines in 1usize..4,
        comma_style in 0usize..3,
    ) {
        let sep = [",", ", ", " , "][comma_style];
        let rendered: Vec<String> = ranges.iter().map(render).collect();
        // Spread over `lines` header values.
        let per = rendered.len().div_ceil(lines);
        let values: Vec<String> = rendered.chunks(per).map(|c| c.join(sep)).collect();
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        let parsed = parse_accept(&refs).map_err(|e| TestCaseError::fail(format!("{refs:?}: {e}")))?;
        prop_assert_eq!(parsed, expected(&ranges), "header {:?}", refs);
    }

    #[test]
    fn display_parses_back(ranges in proptest::collection::vec(gen_range(), 1..4)) {
        let parsed = parse_accept(&[&ranges.iter().map(render).collect::<Vec<_>>().join(",")]).unwrap();
        let again: Vec<String> = parsed.iter().map(ToString::to_string).collect();
        prop_assert_eq!(parse_accept(&[&again.join(", ")]).unwrap(), parsed);
    }
}

// ---- q=0 is never chosen ----

fn offers() -> Vec<Offer> {
    vec![
        Offer::multipart("application/dicom")
            .original(JPEG)
            .transcode(ELE),
        Offer::multipart("application/octet-stream").original(ELE),
        Offer::single("application/dicom+json"),
        Offer::single("application/json"),
        Offer::single("image/jpeg"),
        Offer::single("image/png"),
    ]
}

/// Fully specific ranges, one per representation: (offer index, syntax), range text.
const EXACT: &[((usize, Option<&str>), &str)] = &[
    (
        (0, Some(JPEG)),
        "multipart/related; type=\"application/dicom\"; transfer-syntax=1.2.840.10008.1.2.4.50",
    ),
    (
        (0, Some(ELE)),
        "multipart/related; type=application/dicom; transfer-syntax=1.2.840.10008.1.2.1",
    ),
    (
        (1, Some(ELE)),
        "multipart/related; type=\"application/octet-stream\"; transfer-syntax=1.2.840.10008.1.2.1",
    ),
    ((2, None), "application/dicom+json"),
    ((3, None), "application/json"),
    ((4, None), "image/jpeg"),
    ((5, None), "image/png"),
];

const WILD: &[&str] = &[
    "*/*",
    "image/*",
    "application/*",
    "multipart/*",
    "multipart/related",
    "multipart/related; type=\"application/dicom\"",
    "multipart/related; type=\"application/dicom\"; transfer-syntax=*",
    "multipart/related; type=\"application/octet-stream\"",
    "multipart/related; type=image/*",
];

/// Weights in thousandths, often 0 (the case under test) or 1.
fn weight() -> impl Strategy<Value = u16> {
    prop_oneof![2 => Just(0u16), 1 => Just(1000u16), 2 => 1u16..1000]
}

fn q_text(millis: u16) -> String {
    format!("{}.{:03}", millis / 1000, millis % 1000)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn only_q_zero_is_never_acceptable(picks in proptest::collection::vec((0usize..16, any::<bool>()), 1..8)) {
        let header: Vec<String> = picks
            .iter()
            .map(|&(i, pad)| {
                let text = if i < EXACT.len() { EXACT[i].1 } else { WILD[(i - EXACT.len()) % WILD.len()] };
                format!("{text}{}q=0", if pad { " ; " } else { ";" })
            })
            .collect();
        let ranges = parse_accept(&[&header.join(", ")]).unwrap();
        let r = negotiate(&ranges, &offers());
        prop_assert!(matches!(r, Err(ApiError::NotAcceptable(_))), "{:?} -> {:?}", header, r);
    }

    #[test]
    fn q_zero_ranges_are_never_chosen(
        exact in proptest::collection::vec((0..EXACT.len(), weight()), 0..8),
        wild in proptest::collection::vec((0..WILD.len(), weight()), 0..4),
        shuffle in any::<u64>(),
    ) {
        let mut items: Vec<String> = exact
            .iter()
            .map(|&(i, q)| format!("{};q={}", EXACT[i].1, q_text(q)))
            .chain(wild.iter().map(|&(i, q)| format!("{};q={}", WILD[i], q_text(q))))
            .collect();
        // Deterministic shuffle so that order is not what decides.
        let n = items.len();
        if n > 1 {
            items.rotate_left((shuffle as usize) % n);
        }
        let header = items.join(", ");
        let ranges = parse_accept(&[&header]).unwrap();
        let offers = offers();
        let zeroed: Vec<(usize, Option<&str>)> =
            exact.iter().filter(|&&(_, q)| q == 0).map(|&(i, _)| EXACT[i].0).collect();
        let wanted: Vec<(usize, Option<&str>)> = exact
            .iter()
            .filter(|&&(_, q)| q > 0)
            .map(|&(i, _)| EXACT[i].0)
            .filter(|rep| !zeroed.contains(rep))
            .collect();
        match negotiate(&ranges, &offers) {
            Ok(choice) => {
                let uid = match (choice.offer, choice.transfer_syntax.as_deref()) {
                    (0, None) => Some(JPEG),
                    (1, None) => Some(ELE),
                    (_, Some(u)) => Some(if u == ELE { ELE } else { JPEG }),
                    (_, None) => None,
                };
                prop_assert!(!zeroed.contains(&(choice.offer, uid)), "{} chose {:?}", header, choice);
            }
            Err(e) => {
                prop_assert!(matches!(e, ApiError::NotAcceptable(_)));
                prop_assert!(wanted.is_empty(), "{} refused although {:?} is wanted", header, wanted);
            }
        }
    }
}
