//! Property tests of the QIDO-RS parameter parser: it never panics, refuses
//! nonsense with a 400, and reads well-formed parameters into the query
//! model faithfully.

use pacs_archive::query::{ATTRIBUTES, Level, MatchKind, Matcher};
use pacs_viewer_api::ApiError;
use pacs_viewer_api::dicomweb::qido::{Include, parse_request};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn level() -> impl Strategy<Value = Level> {
    prop_oneof![Just(Level::Study), Just(Level::Series), Just(Level::Image)]
}

/// Keywords of attributes a query at `level` can match on.
fn matchable(level: Level) -> Vec<&'static str> {
    ATTRIBUTES
        .iter()
        .filter(|a| a.kind != MatchKind::Computed && a.level <= level && a.keyword != "Modality")
        .map(|a| a.keyword)
        .collect()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn never_panics_on_anything(
        pairs in prop::collection::vec((".{0,24}", ".{0,40}"), 0..8),
        level in level(),
    ) {
        match parse_request(&pairs, level, 100, 1000) {
            Ok(r) => prop_assert!(r.limit <= 1000),
            Err(e) => prop_assert!(matches!(e, ApiError::BadRequest(_)), "{e}"),
        }
    }

    #[test]
    fn well_formed_parameters_are_read_faithfully(
        level in level(),
        picks in prop::collection::vec((any::<prop::sample::Index>(), "[A-Za-z0-9.^]{1,12}", any::<bool>()), 1..5),
        limit in proptest::option::of(0usize..5000),
        offset in 0usize..100_000,
        fuzzy in any::<bool>(),
        hex in any::<bool>(),
    ) {
        let keys = matchable(level);
        let mut pairs = Vec::new();
        let mut expected = Vec::new();
        for (i, value, wildcard) in &picks {
            let keyword = keys[i.index(keys.len())];
            let attribute = ATTRIBUTES.iter().find(|a| a.keyword == keyword).unwrap();
            let value = if *wildcard { format!("{value}*") } else { value.clone() };
            let name = if hex { format!("{:08X}", attribute.tag) } else { keyword.to_owned() };
            pairs.push((name, value.clone()));
            expected.push((attribute.tag, Matcher::parse(attribute.kind, &value, true)));
        }
        if let Some(l) = limit {
            pairs.push(("limit".into(), l.to_string()));
        }
        pairs.push(("offset".into(), offset.to_string()));
        pairs.push(("fuzzymatching".into(), fuzzy.to_string()));
        pairs.push(("includefield".into(), "StudyDescription,00080020".into()));
        let r = parse_request(&pairs, level, 100, 1000).unwrap();
        prop_assert_eq!(r.offset, offset);
        prop_assert_eq!(r.limit, limit.unwrap_or(100).min(1000));
        prop_assert_eq!(r.query.fuzzy, fuzzy);
        prop_assert_eq!(r.include, Include::Tags(vec![0x0008_1030, 0x0008_0020]));
        prop_assert!(r.unsupported.is_empty());
        // Every key is a condition with the matcher the query model reads
        // from its value (universal ones are left out).
        for (tag, matcher) in expected {
            if matcher.is_universal() {
                continue;
            }
            prop_assert!(
                r.query.conditions.iter().any(|c| c.attribute.tag == tag && c.matcher == matcher),
                "{tag:08X} {matcher:?} missing from {:?}", r.query.conditions
            );
        }
    }

    #[test]
    fn numbers_that_are_not_numbers_are_refused(bad in "[^0-9]{1,8}|-[0-9]{1,4}") {
        for name in ["limit", "offset"] {
            let r = parse_request(&[(name.to_owned(), bad.clone())], Level::Study, 100, 1000);
            prop_assert!(matches!(r, Err(ApiError::BadRequest(_))), "{name}={bad:?}");
        }
    }
}
