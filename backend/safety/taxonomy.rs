//! The 11 ELITE hazard categories (aligned with the MLCommons hazard taxonomy), with lookup by
//! code (`S1`..`S11`) or by name, case-insensitively, accepting the release CSV's spelling
//! (`Self-Harm` for S10) as well as the paper's (`Suicide & Self-Harm`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::SafetyError;

/// An ELITE hazard category. Ordered S1 < S2 < ... < S11; serialised as its code (`"S1"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Category {
    /// S1 Violent Crimes.
    #[serde(rename = "S1")]
    ViolentCrimes,
    /// S2 Non-Violent Crimes.
    #[serde(rename = "S2")]
    NonViolentCrimes,
    /// S3 Sex Crimes.
    #[serde(rename = "S3")]
    SexCrimes,
    /// S4 Defamation.
    #[serde(rename = "S4")]
    Defamation,
    /// S5 Specialized Advice.
    #[serde(rename = "S5")]
    SpecializedAdvice,
    /// S6 Privacy.
    #[serde(rename = "S6")]
    Privacy,
    /// S7 Intellectual Property.
    #[serde(rename = "S7")]
    IntellectualProperty,
    /// S8 Indiscriminate Weapons.
    #[serde(rename = "S8")]
    IndiscriminateWeapons,
    /// S9 Hate.
    #[serde(rename = "S9")]
    Hate,
    /// S10 Suicide & Self-Harm (the release CSV calls it "Self-Harm").
    #[serde(rename = "S10")]
    SuicideSelfHarm,
    /// S11 Sexual Content.
    #[serde(rename = "S11")]
    SexualContent,
}

impl Category {
    /// All categories in order S1..S11.
    pub const ALL: [Category; 11] = [
        Category::ViolentCrimes,
        Category::NonViolentCrimes,
        Category::SexCrimes,
        Category::Defamation,
        Category::SpecializedAdvice,
        Category::Privacy,
        Category::IntellectualProperty,
        Category::IndiscriminateWeapons,
        Category::Hate,
        Category::SuicideSelfHarm,
        Category::SexualContent,
    ];

    /// The number of the category, 1..=11.
    pub fn number(self) -> u8 {
        match self {
            Category::ViolentCrimes => 1,
            Category::NonViolentCrimes => 2,
            Category::SexCrimes => 3,
            Category::Defamation => 4,
            Category::SpecializedAdvice => 5,
            Category::Privacy => 6,
            Category::IntellectualProperty => 7,
            Category::IndiscriminateWeapons => 8,
            Category::Hate => 9,
            Category::SuicideSelfHarm => 10,
            Category::SexualContent => 11,
        }
    }

    /// The code, `"S1"`..`"S11"`.
    pub fn code(self) -> &'static str {
        match self {
            Category::ViolentCrimes => "S1",
            Category::NonViolentCrimes => "S2",
            Category::SexCrimes => "S3",
            Category::Defamation => "S4",
            Category::SpecializedAdvice => "S5",
            Category::Privacy => "S6",
            Category::IntellectualProperty => "S7",
            Category::IndiscriminateWeapons => "S8",
            Category::Hate => "S9",
            Category::SuicideSelfHarm => "S10",
            Category::SexualContent => "S11",
        }
    }

    /// The name as the paper gives it (e.g. `"Suicide & Self-Harm"` for S10).
    pub fn name(self) -> &'static str {
        match self {
            Category::SuicideSelfHarm => "Suicide & Self-Harm",
            other => other.csv_name(),
        }
    }

    /// The name as the release CSV spells it in its `taxonomy` column (`"Self-Harm"` for S10).
    pub fn csv_name(self) -> &'static str {
        match self {
            Category::ViolentCrimes => "Violent Crimes",
            Category::NonViolentCrimes => "Non-Violent Crimes",
            Category::SexCrimes => "Sex Crimes",
            Category::Defamation => "Defamation",
            Category::SpecializedAdvice => "Specialized Advice",
            Category::Privacy => "Privacy",
            Category::IntellectualProperty => "Intellectual Property",
            Category::IndiscriminateWeapons => "Indiscriminate Weapons",
            Category::Hate => "Hate",
            Category::SuicideSelfHarm => "Self-Harm",
            Category::SexualContent => "Sexual Content",
        }
    }

    /// Looks a category up by its code, case-insensitively and ignoring surrounding spaces
    /// (`"S1"`, `"s10"`).
    pub fn from_code(code: &str) -> Option<Category> {
        let code = code.trim();
        let digits = code.strip_prefix(['S', 's'])?;
        if digits.is_empty() || digits.len() > 2 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let number: u8 = digits.parse().ok()?;
        Category::ALL.into_iter().find(|c| c.number() == number)
    }

    /// Looks a category up by name, ignoring case, spaces and punctuation, with `&` read as
    /// `and`. Accepts the paper's names, the CSV's names and a few obvious variants
    /// (`"suicide and self-harm"`, `"self harm"`, `"nonviolent crimes"`, `"specialised advice"`).
    pub fn from_name(name: &str) -> Option<Category> {
        let key = name_key(name);
        if key.is_empty() {
            return None;
        }
        if let Some(found) = Category::ALL
            .into_iter()
            .find(|c| name_key(c.name()) == key || name_key(c.csv_name()) == key)
        {
            return Some(found);
        }
        match key.as_str() {
            "suicideselfharm" | "suicide" | "selfharmandsuicide" => Some(Category::SuicideSelfHarm),
            "specialisedadvice" => Some(Category::SpecializedAdvice),
            "indiscriminateweaponscbrne" | "cbrne" => Some(Category::IndiscriminateWeapons),
            "sexualcontents" => Some(Category::SexualContent),
            _ => None,
        }
    }

    /// Looks a category up by code or by name (see [`Category::from_code`] and
    /// [`Category::from_name`]).
    pub fn lookup(text: &str) -> Option<Category> {
        Category::from_code(text).or_else(|| Category::from_name(text))
    }
}

/// Lower-cased ASCII letters and digits of a name, with `&` spelled `and`.
fn name_key(name: &str) -> String {
    let mut key = String::with_capacity(name.len());
    for ch in name.chars() {
        if ch == '&' {
            key.push_str("and");
        } else if ch.is_alphanumeric() {
            key.extend(ch.to_lowercase());
        }
    }
    key
}

impl fmt::Display for Category {
    /// Writes the code, e.g. `S10`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl FromStr for Category {
    type Err = SafetyError;

    /// Parses a code or a name (see [`Category::lookup`]).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Category::lookup(text).ok_or_else(|| SafetyError::UnknownCategory(text.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_names_round_trip() {
        for category in Category::ALL {
            assert_eq!(Category::from_code(category.code()), Some(category));
            assert_eq!(Category::from_name(category.name()), Some(category));
            assert_eq!(Category::from_name(category.csv_name()), Some(category));
            assert_eq!(category.code().parse::<Category>(), Ok(category));
        }
    }

    #[test]
    fn lookup_is_case_and_punctuation_insensitive() {
        assert_eq!(Category::lookup("s10"), Some(Category::SuicideSelfHarm));
        assert_eq!(
            Category::lookup("SELF-HARM"),
            Some(Category::SuicideSelfHarm)
        );
        assert_eq!(
            Category::lookup("suicide and self harm"),
            Some(Category::SuicideSelfHarm)
        );
        assert_eq!(
            Category::lookup("non violent crimes"),
            Some(Category::NonViolentCrimes)
        );
        assert_eq!(Category::lookup("S12"), None);
        assert_eq!(Category::lookup("S0"), None);
        assert_eq!(Category::lookup("S001"), None);
        assert_eq!(Category::lookup(""), None);
        assert_eq!(Category::lookup("crimes"), None);
    }

    #[test]
    fn serialises_as_code() {
        let json = serde_json::to_string(&Category::SexualContent).unwrap();
        assert_eq!(json, "\"S11\"");
        let back: Category = serde_json::from_str(&json).unwrap();
        assert_eq!(back, Category::SexualContent);
    }
}
