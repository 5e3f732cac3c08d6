//! The abstract and transfer syntaxes the gateway accepts. The storage
//! tables are generated (`generated.rs`, see `examples/generate-sop-classes.rs`)
//! from the PS3.6 UID dictionary, never picked by hand.

mod generated;

pub use generated::{STORAGE_SOP_CLASSES, STORAGE_TRANSFER_SYNTAXES};

/// One UID of the standard with its PS3.6 name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidEntry {
    pub uid: &'static str,
    pub name: &'static str,
    pub retired: bool,
}

/// Verification SOP Class (C-ECHO).
pub const VERIFICATION: &str = "1.2.840.10008.1.1";

/// Is this one of the Storage SOP Classes of the standard?
pub fn is_storage(sop_class_uid: &str) -> bool {
    STORAGE_SOP_CLASSES.iter().any(|e| e.uid == sop_class_uid)
}

/// The PS3.6 name of a storage SOP class or transfer syntax, for logs.
pub fn name(uid: &str) -> &'static str {
    STORAGE_SOP_CLASSES
        .iter()
        .chain(STORAGE_TRANSFER_SYNTAXES)
        .find(|e| e.uid == uid)
        .map_or("unknown", |e| e.name)
}

/// Every abstract syntax the gateway accepts a presentation context for.
pub fn accepted_abstract_syntaxes() -> impl Iterator<Item = &'static str> {
    [
        VERIFICATION,
        crate::services::find::PATIENT_ROOT_FIND,
        crate::services::find::STUDY_ROOT_FIND,
        crate::services::find::PATIENT_ROOT_GET,
        crate::services::find::STUDY_ROOT_GET,
        crate::services::find::PATIENT_ROOT_MOVE,
        crate::services::find::STUDY_ROOT_MOVE,
    ]
    .into_iter()
    .chain(STORAGE_SOP_CLASSES.iter().map(|e| e.uid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::dictionary::{UidDictionary, UidType};
    use dicom_dictionary_std::StandardSopClassDictionary;
    use dicom_encoding::TransferSyntaxIndex;
    use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

    #[test]
    fn storage_table_agrees_with_the_dictionary() {
        assert!(
            STORAGE_SOP_CLASSES.len() > 150,
            "{}",
            STORAGE_SOP_CLASSES.len()
        );
        for e in STORAGE_SOP_CLASSES {
            let entry = StandardSopClassDictionary
                .by_uid(e.uid)
                .unwrap_or_else(|| panic!("{} is not in the dictionary", e.uid));
            assert_eq!(entry.r#type, UidType::SopClass);
            assert_eq!(entry.name, e.name);
            assert_eq!(entry.retired, e.retired);
        }
        for uid in [
            "1.2.840.10008.5.1.4.1.1.2",      // CT Image Storage
            "1.2.840.10008.5.1.4.1.1.4",      // MR Image Storage
            "1.2.840.10008.5.1.4.1.1.1",      // CR Image Storage
            "1.2.840.10008.5.1.4.1.1.3.1",    // US Multi-frame Image Storage
            "1.2.840.10008.5.1.4.1.1.88.33",  // Comprehensive SR
            "1.2.840.10008.5.1.4.1.1.104.1",  // Encapsulated PDF
            "1.2.840.10008.5.1.4.1.1.6",      // Ultrasound Image Storage (Retired)
            "1.2.840.10008.5.1.4.1.1.77.1.6", // VL Whole Slide Microscopy
        ] {
            assert!(is_storage(uid), "{uid}");
        }
        assert!(!is_storage("1.2.840.10008.1.20.1")); // Storage Commitment
        assert!(!is_storage("1.2.840.10008.1.3.10")); // DICOMDIR
    }

    #[test]
    fn every_storage_transfer_syntax_is_negotiable_by_dicom_ul() {
        for e in STORAGE_TRANSFER_SYNTAXES {
            let ts = TransferSyntaxRegistry.get(e.uid);
            let known = ts.is_some_and(|ts| !ts.is_unsupported());
            // dicom-ul only accepts syntaxes that its registry knows; these are
            // the ones a peer can actually send us.
            if !known {
                println!("not negotiable: {} {}", e.uid, e.name);
            }
        }
        for uid in [
            "1.2.840.10008.1.2",
            "1.2.840.10008.1.2.1",
            "1.2.840.10008.1.2.1.99",
            "1.2.840.10008.1.2.2",
            "1.2.840.10008.1.2.4.50",
            "1.2.840.10008.1.2.4.51",
            "1.2.840.10008.1.2.4.57",
            "1.2.840.10008.1.2.4.70",
            "1.2.840.10008.1.2.4.80",
            "1.2.840.10008.1.2.4.81",
            "1.2.840.10008.1.2.4.90",
            "1.2.840.10008.1.2.4.91",
            "1.2.840.10008.1.2.4.201",
            "1.2.840.10008.1.2.4.203",
            "1.2.840.10008.1.2.5",
        ] {
            assert!(
                STORAGE_TRANSFER_SYNTAXES.iter().any(|e| e.uid == uid),
                "{uid}"
            );
            assert!(
                dicom_ul::association::server::is_supported(uid),
                "dicom-ul cannot negotiate {uid}"
            );
        }
    }
}
