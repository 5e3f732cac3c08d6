//! Case and accent folding of person names, and DICOM date/time
//! normalisation, shared by indexing and query translation.
//!
//! Folding is the archive's (`Müller` -> `muller`, `Øvergård` ->
//! `overgard`, Greek accents stripped; one character for one, so the
//! catalog's SQL matching agrees), plus dropping combining diacritical
//! marks. Characters without a base letter (CJK...) are only lowercased.

/// Fold a string for case- and accent-insensitive matching: the archive's
/// one person-name folding (`pacs_archive::query::fold_person_name`, which
/// the catalog's SQL matching uses too), and combining diacritical marks
/// dropped (for names stored decomposed). `*` and `?` pass through
/// unchanged, so a wildcard pattern folds like a value.
pub fn fold(value: &str) -> String {
    pacs_archive::query::fold_person_name(value)
        .chars()
        .filter(|c| !('\u{0300}'..='\u{036f}').contains(c))
        .collect()
}

/// The folded name components of a person name: split at the component
/// (`^`), group (`=`) and word separators; empty parts dropped.
pub fn name_tokens(folded: &str) -> impl Iterator<Item = &str> {
    folded
        .split(|c: char| matches!(c, '^' | '=' | ' ' | ',' | '-' | '.' | '\'') || c.is_whitespace())
        .filter(|t| !t.is_empty())
}

/// The values a folded person name is indexed under for whole-value
/// matching: the whole value and, for multi-group names
/// (`Yamada^Tarou=山田^太郎=...`), each non-empty component group.
pub fn name_values(folded: &str) -> Vec<&str> {
    let mut values = vec![folded];
    if folded.contains('=') {
        for group in folded.split('=') {
            if !group.is_empty() && !values.contains(&group) {
                values.push(group);
            }
        }
    }
    values
}

/// A DICOM DA value as indexed: without separators (`2020.01.31` and
/// `2020-01-31` become `20200131`) and padding.
pub fn normalize_date(value: &str) -> String {
    value
        .trim_matches(|c: char| c == ' ' || c == '\0')
        .chars()
        .filter(|c| !matches!(c, '.' | '-' | ' '))
        .collect()
}

/// A DICOM TM value as indexed: without `:` separators (ACR-NEMA) and
/// padding. The fraction keeps its `.`.
pub fn normalize_time(value: &str) -> String {
    value
        .trim_matches(|c: char| c == ' ' || c == '\0')
        .chars()
        .filter(|c| !matches!(c, ':' | ' '))
        .collect()
}

/// The newest-first sort key of a study: `YYYYMMDD * 10^11 +
/// microseconds of the day`; 0 for an unknown date.
pub fn sort_key(date: Option<&str>, time: Option<&str>) -> u64 {
    let date: u64 = date
        .map(normalize_date)
        .filter(|d| d.len() == 8 && d.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|d| d.parse().ok())
        .unwrap_or(0);
    if date == 0 {
        return 0;
    }
    date * 100_000_000_000 + time.map(time_micros).unwrap_or(0)
}

/// Microseconds after midnight of a TM value (`HH`, `HHMM`, `HHMMSS`,
/// `HHMMSS.F{1,6}`); 0 when unreadable.
fn time_micros(value: &str) -> u64 {
    let value = normalize_time(value);
    let (whole, fraction) = value.split_once('.').unwrap_or((&value, ""));
    if whole.is_empty() || whole.len() > 6 || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return 0;
    }
    let field = |i: usize| -> u64 {
        whole
            .get(i..i + 2)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    };
    let seconds = (field(0) * 3600 + field(2) * 60 + field(4)).min(86_399);
    let mut micros = 0u64;
    let mut scale = 100_000u64;
    for b in fraction.bytes().take(6) {
        if !b.is_ascii_digit() {
            break;
        }
        micros += u64::from(b - b'0') * scale;
        scale /= 10;
    }
    seconds * 1_000_000 + micros
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_case_and_accents() {
        assert_eq!(fold("Müller^Jürgen"), "muller^jurgen");
        assert_eq!(fold("MÜLLER*"), "muller*");
        assert_eq!(fold("Øvergård^Åse"), "overgard^ase");
        // One character for one (as SQL GLOB classes need): ß stays ß.
        assert_eq!(fold("STRAßE"), "straße");
        assert_eq!(fold("Παπαδοπούλου^Ελένη"), "παπαδοπουλου^ελενη");
        assert_eq!(fold("ΠΑΠΑΔΟΠΟΥΛΟΥ"), "παπαδοπουλου");
        assert_eq!(fold("Ne\u{0301}e"), "nee");
        assert_eq!(fold("山田^太郎"), "山田^太郎");
        assert_eq!(fold("Horváth Łukasz"), "horvath lukasz");
    }

    #[test]
    fn name_tokens_and_groups() {
        let f = fold("Yamada^Tarou=山田^太郎=やまだ^たろう");
        assert_eq!(
            name_tokens(&f).collect::<Vec<_>>(),
            ["yamada", "tarou", "山田", "太郎", "やまだ", "たろう"]
        );
        assert_eq!(
            name_values(&f),
            [
                "yamada^tarou=山田^太郎=やまだ^たろう",
                "yamada^tarou",
                "山田^太郎",
                "やまだ^たろう"
            ]
        );
        assert_eq!(
            name_tokens("o'brien^peter^^dr.").collect::<Vec<_>>(),
            ["o", "brien", "peter", "dr"]
        );
    }

    #[test]
    fn dates_times_and_sort_keys() {
        assert_eq!(normalize_date("2020.01.31"), "20200131");
        assert_eq!(normalize_time("12:30:15.5"), "123015.5");
        assert_eq!(sort_key(None, Some("120000")), 0);
        assert_eq!(
            sort_key(Some("20200131"), Some("120000.5")),
            20_200_131 * 100_000_000_000 + 43_200_500_000
        );
        assert!(sort_key(Some("20200131"), Some("1201")) > sort_key(Some("20200131"), Some("12")));
        assert!(
            sort_key(Some("20200201"), None) > sort_key(Some("20200131"), Some("235959.999999"))
        );
        // The largest key fits.
        assert!(sort_key(Some("99991231"), Some("235959.999999")) < u64::MAX);
    }
}
