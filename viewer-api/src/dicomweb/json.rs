//! DICOM JSON (PS3.18 F.2) pieces: elements built from catalog values, and
//! objects with their keys in tag order.

use serde_json::{Map, Value, json};

/// `GGGGEEEE`, upper-case hex: the key of a DICOM JSON element.
pub fn tag_key(tag: u32) -> String {
    format!("{tag:08X}")
}

/// The tag of an 8-hex key.
pub fn parse_tag_key(key: &str) -> Option<u32> {
    (key.len() == 8 && key.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u32::from_str_radix(key, 16).ok())
        .flatten()
}

/// VRs whose JSON values are numbers.
fn numeric_vr(vr: &str) -> bool {
    matches!(
        vr,
        "IS" | "DS" | "FL" | "FD" | "SL" | "SS" | "SV" | "UL" | "US" | "UV"
    )
}

/// One element from a stored text value (backslash separates values).
/// Empty values give an element without `Value`, as PS3.18 F.2.5 wants for
/// a present but empty attribute.
pub fn element_from_text(vr: &str, raw: Option<&str>) -> Value {
    let raw = raw.map(|r| r.trim_end_matches(['\0', ' '])).unwrap_or("");
    if raw.is_empty() {
        return json!({ "vr": vr });
    }
    let values: Vec<Value> = raw
        .split('\\')
        .map(|v| {
            let v = v.trim();
            if vr == "PN" {
                person_name(v)
            } else if numeric_vr(vr) {
                number(v)
            } else {
                Value::String(v.to_owned())
            }
        })
        .collect();
    json!({ "vr": vr, "Value": values })
}

/// An element with string values.
pub fn element_strings<S: AsRef<str>>(vr: &str, values: &[S]) -> Value {
    if values.is_empty() {
        return json!({ "vr": vr });
    }
    let values: Vec<Value> = values
        .iter()
        .map(|v| Value::String(v.as_ref().to_owned()))
        .collect();
    json!({ "vr": vr, "Value": values })
}

/// An element with one number.
pub fn element_number(vr: &str, value: u64) -> Value {
    json!({ "vr": vr, "Value": [value] })
}

fn number(v: &str) -> Value {
    if let Ok(i) = v.parse::<i64>() {
        return Value::from(i);
    }
    match v.parse::<f64>() {
        Ok(f) if f.is_finite() => Value::from(f),
        _ => Value::Null,
    }
}

/// A PN value: `Alphabetic=Ideographic=Phonetic` groups.
fn person_name(v: &str) -> Value {
    let mut obj = Map::new();
    for (group, name) in v.split('=').zip(["Alphabetic", "Ideographic", "Phonetic"]) {
        if !group.is_empty() {
            obj.insert(name.to_owned(), Value::String(group.to_owned()));
        }
    }
    Value::Object(obj)
}

/// A DICOM JSON object under construction; [`DicomJson::finish`] puts its
/// keys in tag order.
#[derive(Debug, Default, Clone)]
pub struct DicomJson {
    elements: Vec<(u32, Value)>,
}

impl DicomJson {
    pub fn new() -> Self {
        Self::default()
    }

    /// Set an element (a later value for the same tag wins).
    pub fn set(&mut self, tag: u32, value: Value) {
        match self.elements.iter_mut().find(|(t, _)| *t == tag) {
            Some(slot) => slot.1 = value,
            None => self.elements.push((tag, value)),
        }
    }

    pub fn finish(mut self) -> Value {
        self.elements.sort_by_key(|(t, _)| *t);
        let mut map = Map::with_capacity(self.elements.len());
        for (tag, value) in self.elements {
            map.insert(tag_key(tag), value);
        }
        Value::Object(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_from_text() {
        assert_eq!(
            element_from_text("PN", Some("Doe^John=山田^太郎")),
            json!({"vr":"PN","Value":[{"Alphabetic":"Doe^John","Ideographic":"山田^太郎"}]})
        );
        assert_eq!(
            element_from_text("IS", Some("12")),
            json!({"vr":"IS","Value":[12]})
        );
        assert_eq!(
            element_from_text("CS", Some("CT\\MR")),
            json!({"vr":"CS","Value":["CT","MR"]})
        );
        assert_eq!(element_from_text("DA", Some("")), json!({"vr":"DA"}));
    }

    #[test]
    fn objects_come_out_in_tag_order() {
        let mut o = DicomJson::new();
        o.set(0x0020_000D, json!({"vr":"UI"}));
        o.set(0x0008_0020, json!({"vr":"DA"}));
        o.set(0x0010_0010, json!({"vr":"PN"}));
        let keys: Vec<String> = o.finish().as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["00080020", "00100010", "0020000D"]);
        assert_eq!(parse_tag_key("0020000d"), Some(0x0020_000D));
        assert_eq!(parse_tag_key("0020000"), None);
    }
}
