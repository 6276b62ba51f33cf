//! Generator kinds (the closed vocabulary a model may choose from), the heuristics that pick
//! one per column from its name and type, and the per-cell value functions.
//!
//! Every cell is a pure function of (seed, table, column, row): its random draws come from a
//! ChaCha8 stream keyed by a SHA-256 of (seed, schema, table, column) with the row as the
//! stream number, so output does not depend on the order tables or rows are produced in, and
//! adding a column does not change the others.

use std::fmt::Write as _;

use fake::Fake;
use fake::faker::address::en::{
    BuildingNumber, CityName, CountryCode, CountryName, StateName, StreetName, StreetSuffix,
    ZipCode,
};
use fake::faker::company::en::{CompanyName, Profession};
use fake::faker::lorem::en::{Paragraph, Sentence, Word, Words};
use fake::faker::name::en::{FirstName, LastName};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::checks::ColumnRule;
use crate::schema::{Column, TypeKind};

/// How one column's values are made. A model may pick among these and nothing else.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum GeneratorKind {
    /// 1, 2, 3, ... (row number).
    Sequence,
    /// Uniform integer in `[min, max]`.
    Integer {
        /// Smallest value.
        min: i64,
        /// Largest value.
        max: i64,
    },
    /// Decimal in `[min, max]` with the column's scale.
    Decimal {
        /// Smallest value.
        min: f64,
        /// Largest value.
        max: f64,
    },
    /// A price: 0.50 to 999.99, mostly ending in .99/.49/.00.
    Price,
    /// A small positive quantity, 1 to 20.
    Quantity,
    /// true or false.
    Boolean,
    /// A given name.
    FirstName,
    /// A family name.
    LastName,
    /// Given and family name.
    FullName,
    /// A login handle.
    Username,
    /// An address on example.com, example.net or example.org (RFC 2606).
    Email,
    /// A phone number in the fictional 555 range.
    Phone,
    /// A company name.
    Company,
    /// A job title.
    JobTitle,
    /// A street address.
    StreetAddress,
    /// A city.
    City,
    /// A state or region.
    Region,
    /// A country name.
    Country,
    /// An ISO 3166 two-letter country code.
    CountryCode,
    /// A postal code.
    PostalCode,
    /// An https URL on example.com.
    Url,
    /// A lowercase slug.
    Slug,
    /// A code such as `SKU-004213`.
    Code,
    /// One word.
    Word,
    /// A few words, capitalised like a title or product name.
    Title,
    /// A sentence.
    Sentence,
    /// A paragraph.
    Paragraph,
    /// An ISO 4217 currency code.
    Currency,
    /// A `#rrggbb` colour.
    Color,
    /// A hex token (for password hashes and API keys; never a real secret).
    Token,
    /// One of the given values.
    OneOf {
        /// Allowed values.
        values: Vec<String>,
    },
    /// A date between 2020-01-01 and 2025-12-31.
    Date,
    /// A birth date between 1950 and 2005.
    BirthDate,
    /// A timestamp between 2020-01-01 and 2025-12-31.
    Timestamp,
    /// A time of day.
    Time,
    /// An interval of minutes to days.
    Interval,
    /// A version 4 UUID.
    Uuid,
    /// A small JSON object.
    Json,
    /// A few random bytes.
    Bytes,
    /// An IP address from the documentation ranges (RFC 5737, RFC 3849).
    IpAddress,
    /// A locally administered MAC address.
    MacAddress,
    /// A float in `[min, max]`.
    Float {
        /// Smallest value.
        min: f64,
        /// Largest value.
        max: f64,
    },
    /// One of the values of a vocabulary that a model proposed for this column and that
    /// passed validation (see [`crate::proposal`]); unique columns append the row's index.
    /// Never read from a model's kind choice: only the proposal step makes it.
    #[serde(skip_deserializing)]
    Vocabulary {
        /// The values.
        values: Vec<String>,
    },
}

impl GeneratorKind {
    /// The kind names a model may choose from.
    pub const NAMES: &'static [&'static str] = &[
        "sequence",
        "integer",
        "decimal",
        "price",
        "quantity",
        "boolean",
        "first_name",
        "last_name",
        "full_name",
        "username",
        "email",
        "phone",
        "company",
        "job_title",
        "street_address",
        "city",
        "region",
        "country",
        "country_code",
        "postal_code",
        "url",
        "slug",
        "code",
        "word",
        "title",
        "sentence",
        "paragraph",
        "currency",
        "color",
        "token",
        "one_of",
        "date",
        "birth_date",
        "timestamp",
        "time",
        "interval",
        "uuid",
        "json",
        "bytes",
        "ip_address",
        "mac_address",
        "float",
    ];

    /// Whether this kind can produce values for a column of this type.
    pub fn fits(&self, kind: &TypeKind) -> bool {
        use GeneratorKind as G;
        match kind {
            TypeKind::Int16 | TypeKind::Int32 | TypeKind::Int64 => {
                matches!(self, G::Sequence | G::Integer { .. } | G::Quantity)
            }
            TypeKind::Numeric { .. } | TypeKind::Money => matches!(
                self,
                G::Sequence | G::Integer { .. } | G::Quantity | G::Decimal { .. } | G::Price
            ),
            TypeKind::Float32 | TypeKind::Float64 => matches!(
                self,
                G::Sequence
                    | G::Integer { .. }
                    | G::Quantity
                    | G::Decimal { .. }
                    | G::Price
                    | G::Float { .. }
            ),
            TypeKind::Bool => matches!(self, G::Boolean),
            TypeKind::Text { .. } | TypeKind::Char { .. } => !matches!(
                self,
                G::Boolean
                    | G::Date
                    | G::BirthDate
                    | G::Timestamp
                    | G::Time
                    | G::Interval
                    | G::Bytes
                    | G::Integer { .. }
                    | G::Decimal { .. }
                    | G::Float { .. }
                    | G::Price
                    | G::Quantity
                    | G::Sequence
            ),
            TypeKind::Date | TypeKind::Timestamp | TypeKind::TimestampTz => {
                matches!(self, G::Date | G::BirthDate | G::Timestamp)
            }
            TypeKind::Time => matches!(self, G::Time),
            TypeKind::Interval => matches!(self, G::Interval),
            TypeKind::Uuid => matches!(self, G::Uuid),
            TypeKind::Json | TypeKind::Jsonb => matches!(self, G::Json),
            TypeKind::Bytea => matches!(self, G::Bytes),
            TypeKind::Inet | TypeKind::Cidr => matches!(self, G::IpAddress),
            TypeKind::MacAddr => matches!(self, G::MacAddress),
            TypeKind::Enum(_) => matches!(self, G::OneOf { .. }),
            TypeKind::Array(_) | TypeKind::Other => false,
        }
    }

    /// Whether the kind can make every row's value distinct.
    pub fn can_be_unique(&self) -> bool {
        !matches!(
            self,
            GeneratorKind::Boolean | GeneratorKind::OneOf { .. } | GeneratorKind::Time
        )
    }
}

/// A generated value before it is written in PostgreSQL's text format.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// An integer.
    Int(i64),
    /// A decimal as integer units of 10^-scale.
    Decimal {
        /// Value × 10^scale.
        units: i128,
        /// Digits after the point.
        scale: u32,
    },
    /// A float.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// Days since 1970-01-01.
    Date(i64),
    /// Seconds since 1970-01-01 00:00:00 (UTC for `timestamptz`).
    Timestamp(i64),
    /// Text in PostgreSQL input syntax for the column's type (also used for uuid, json,
    /// inet, arrays, enums and values read back from the database).
    Text(String),
}

impl Value {
    /// Writes the value in PostgreSQL's text format (not yet COPY-escaped).
    pub fn write_text(&self, kind: &TypeKind, out: &mut String) {
        match self {
            Value::Null => {}
            Value::Int(v) => {
                let _ = write!(out, "{v}");
            }
            Value::Decimal { units, scale } => write_decimal(*units, *scale, out),
            Value::Float(v) => {
                let _ = write!(out, "{v}");
            }
            Value::Bool(b) => out.push(if *b { 't' } else { 'f' }),
            Value::Date(days) => write_date(*days, out),
            Value::Timestamp(secs) => {
                write_date(secs.div_euclid(86_400), out);
                let s = secs.rem_euclid(86_400);
                let _ = write!(out, " {:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60);
                if matches!(kind, TypeKind::TimestampTz) {
                    out.push_str("+00");
                }
            }
            Value::Text(s) => out.push_str(s),
        }
    }
}

fn write_decimal(units: i128, scale: u32, out: &mut String) {
    if scale == 0 {
        let _ = write!(out, "{units}");
        return;
    }
    let p = 10i128.pow(scale);
    let sign = if units < 0 { "-" } else { "" };
    let a = units.abs();
    let _ = write!(
        out,
        "{sign}{}.{:0width$}",
        a / p,
        a % p,
        width = scale as usize
    );
}

/// Days since 1970-01-01 for a civil date (proleptic Gregorian).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn write_date(days: i64, out: &mut String) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let _ = write!(out, "{y:04}-{m:02}-{d:02}");
}

/// The 32-byte key of a column's (or foreign key's, or unique group's) random stream.
pub fn stream_key(seed: u64, schema: &str, table: &str, part: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"previewd-data/v1\0");
    h.update(seed.to_le_bytes());
    for s in [schema, table, part] {
        h.update((s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    }
    h.finalize().into()
}

/// The random stream of one cell.
pub fn cell_rng(key: &[u8; 32], row: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::from_seed(*key);
    rng.set_stream(row);
    rng
}

const DATE_FROM: (i64, i64, i64) = (2020, 1, 1);
const DATE_TO: (i64, i64, i64) = (2025, 12, 31);
const CURRENCIES: &[&str] = &[
    "USD", "EUR", "GBP", "JPY", "CHF", "CAD", "AUD", "SEK", "NOK", "DKK",
];
const STATUSES: &[&str] = &["active", "pending", "inactive", "archived"];
const DOMAINS: &[&str] = &["example.com", "example.net", "example.org"];

/// Picks a generator kind for a column from its name, table and type.
pub fn heuristic_kind(table: &str, column: &Column) -> Option<GeneratorKind> {
    use GeneratorKind as G;
    let name = column.name.to_ascii_lowercase();
    let table = table.to_ascii_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| name.contains(w));
    let is = |words: &[&str]| words.iter().any(|w| name == *w);
    if let Some(values) = column.rules.iter().find_map(|r| match r {
        ColumnRule::OneOf(v) => Some(v.clone()),
        _ => None,
    }) {
        return Some(G::OneOf { values });
    }
    let kind = match &column.kind {
        TypeKind::Enum(labels) => G::OneOf {
            values: labels.clone(),
        },
        TypeKind::Int16 | TypeKind::Int32 | TypeKind::Int64 => {
            let max = match column.kind {
                TypeKind::Int16 => 1_000,
                _ => 10_000,
            };
            if has(&["quantity", "qty"]) {
                G::Quantity
            } else if has(&["age"]) && !has(&["page", "usage", "stage", "image"]) {
                G::Integer { min: 18, max: 90 }
            } else if has(&["year"]) {
                G::Integer {
                    min: 1990,
                    max: 2025,
                }
            } else if has(&["rating", "stars"]) {
                G::Integer { min: 1, max: 5 }
            } else if has(&["percent", "pct", "score"])
                || has(&["position", "sort", "rank", "priority", "order", "seq"])
            {
                G::Integer { min: 0, max: 100 }
            } else if has(&["count", "stock", "inventory"]) {
                G::Integer { min: 0, max: 1_000 }
            } else if has(&["price", "amount", "cost", "cents", "total"]) {
                G::Integer {
                    min: 50,
                    max: max * 10,
                }
            } else {
                G::Integer { min: 0, max }
            }
        }
        TypeKind::Numeric { .. } | TypeKind::Money => {
            if has(&[
                "price", "amount", "cost", "total", "fee", "balance", "salary", "revenue", "paid",
                "tax",
            ]) {
                G::Price
            } else if has(&["quantity", "qty"]) {
                G::Quantity
            } else if has(&["lat"]) {
                G::Decimal {
                    min: -90.0,
                    max: 90.0,
                }
            } else if has(&["lon", "lng"]) {
                G::Decimal {
                    min: -180.0,
                    max: 180.0,
                }
            } else if has(&["rate", "percent", "pct", "discount"]) {
                G::Decimal {
                    min: 0.0,
                    max: 50.0,
                }
            } else {
                G::Decimal {
                    min: 0.0,
                    max: 1_000.0,
                }
            }
        }
        TypeKind::Float32 | TypeKind::Float64 => {
            if has(&["lat"]) {
                G::Float {
                    min: -90.0,
                    max: 90.0,
                }
            } else if has(&["lon", "lng"]) {
                G::Float {
                    min: -180.0,
                    max: 180.0,
                }
            } else if has(&["price", "amount", "cost", "total"]) {
                G::Price
            } else {
                G::Float {
                    min: 0.0,
                    max: 1_000.0,
                }
            }
        }
        TypeKind::Bool => G::Boolean,
        TypeKind::Date => {
            if has(&["birth", "dob"]) {
                G::BirthDate
            } else {
                G::Date
            }
        }
        TypeKind::Timestamp | TypeKind::TimestampTz => {
            if has(&["birth", "dob"]) {
                G::BirthDate
            } else {
                G::Timestamp
            }
        }
        TypeKind::Time => G::Time,
        TypeKind::Interval => G::Interval,
        TypeKind::Uuid => G::Uuid,
        TypeKind::Json | TypeKind::Jsonb => G::Json,
        TypeKind::Bytea => G::Bytes,
        TypeKind::Inet | TypeKind::Cidr => G::IpAddress,
        TypeKind::MacAddr => G::MacAddress,
        TypeKind::Text { .. } | TypeKind::Char { .. } => {
            let max_len = match column.kind {
                TypeKind::Text { max_len } => max_len,
                TypeKind::Char { len } => Some(len),
                _ => None,
            };
            let people = ["user", "customer", "employee", "person", "people", "author"];
            let people2 = [
                "member", "contact", "staff", "student", "patient", "account",
            ];
            let orgs = [
                "compan", "organi", "org", "vendor", "supplier", "tenant", "team",
            ];
            if has(&["email", "e_mail"]) {
                G::Email
            } else if has(&["first_name", "firstname", "given_name", "forename"]) {
                G::FirstName
            } else if has(&["last_name", "lastname", "surname", "family_name"]) {
                G::LastName
            } else if has(&["username", "user_name", "login", "handle", "nickname"]) {
                G::Username
            } else if has(&["phone", "mobile", "fax", "tel"]) {
                G::Phone
            } else if has(&["country_code", "country_iso"])
                || (has(&["country"]) && max_len.is_some_and(|l| l <= 3))
            {
                G::CountryCode
            } else if has(&["country"]) {
                G::Country
            } else if has(&["currency"]) {
                G::Currency
            } else if has(&["zip", "postal", "postcode"]) {
                G::PostalCode
            } else if has(&["city", "town"]) {
                G::City
            } else if has(&["state", "province", "region"]) && !has(&["status"]) {
                G::Region
            } else if has(&["address", "street"]) {
                G::StreetAddress
            } else if has(&[
                "url", "website", "homepage", "link", "avatar", "image", "photo",
            ]) {
                G::Url
            } else if has(&["slug"]) {
                G::Slug
            } else if has(&[
                "sku",
                "code",
                "reference",
                "serial",
                "isbn",
                "number",
                "ref",
            ]) {
                G::Code
            } else if has(&["color", "colour"]) {
                G::Color
            } else if has(&["password", "hash", "token", "secret", "salt", "api_key"]) {
                G::Token
            } else if has(&["ip_addr", "ip"]) && name.len() <= 12 {
                G::IpAddress
            } else if has(&["company", "employer", "organization", "organisation"]) {
                G::Company
            } else if has(&["job", "occupation", "profession"]) {
                G::JobTitle
            } else if is(&["locale", "language", "lang"]) {
                G::OneOf {
                    values: ["en", "de", "fr", "es", "ja", "pt"]
                        .map(String::from)
                        .to_vec(),
                }
            } else if has(&["status"]) {
                G::OneOf {
                    values: STATUSES.iter().map(|s| (*s).to_string()).collect(),
                }
            } else if has(&["full_name", "display_name", "contact_name", "customer_name"])
                || (is(&["name"]) && people.iter().chain(&people2).any(|p| table.contains(p)))
            {
                G::FullName
            } else if is(&["name"]) && orgs.iter().any(|p| table.contains(p)) {
                G::Company
            } else if is(&["name"]) && table.contains("cit") {
                G::City
            } else if is(&["name"]) && table.contains("countr") {
                G::Country
            } else if has(&["description", "body", "content", "bio", "comment", "note"])
                || has(&["summary", "message", "text", "review", "details"])
            {
                if max_len.is_some_and(|l| l < 120) {
                    G::Sentence
                } else {
                    G::Paragraph
                }
            } else if has(&["title", "subject", "headline"]) {
                G::Sentence
            } else if has(&["name", "label"]) {
                G::Title
            } else if max_len.is_some_and(|l| l <= 4) {
                G::Code
            } else {
                G::Title
            }
        }
        TypeKind::Array(_) | TypeKind::Other => return None,
    };
    Some(kind)
}

/// Numeric bounds from check constraints, as (min, max) with exclusivity folded in for
/// integers and a small epsilon for decimals.
pub fn rule_bounds(rules: &[ColumnRule], integer: bool, scale: u32) -> (Option<f64>, Option<f64>) {
    let step = if integer {
        1.0
    } else {
        10f64.powi(-(scale.min(6) as i32))
    };
    let mut lo: Option<f64> = None;
    let mut hi: Option<f64> = None;
    for r in rules {
        match r {
            ColumnRule::Min { value, inclusive } => {
                let v = if *inclusive {
                    *value
                } else if integer {
                    value.floor() + 1.0
                } else {
                    value + step
                };
                let v = if integer { v.ceil() } else { v };
                lo = Some(lo.map_or(v, |l: f64| l.max(v)));
            }
            ColumnRule::Max { value, inclusive } => {
                let v = if *inclusive {
                    *value
                } else if integer {
                    value.ceil() - 1.0
                } else {
                    value - step
                };
                let v = if integer { v.floor() } else { v };
                hi = Some(hi.map_or(v, |h: f64| h.min(v)));
            }
            _ => {}
        }
    }
    (lo, hi)
}

/// Inputs of one scalar cell.
pub struct CellContext<'a> {
    /// The column.
    pub column: &'a Column,
    /// Generator kind.
    pub kind: &'a GeneratorKind,
    /// Random stream of the cell.
    pub rng: &'a mut ChaCha8Rng,
    /// When the value must differ from every other row's: a distinct index (0-based).
    pub unique_index: Option<u64>,
}

fn type_int_range(kind: &TypeKind) -> (i64, i64) {
    match kind {
        TypeKind::Int16 => (i64::from(i16::MIN), i64::from(i16::MAX)),
        TypeKind::Int32 => (i64::from(i32::MIN), i64::from(i32::MAX)),
        TypeKind::Numeric {
            precision: Some(p),
            scale: Some(s),
        } if p > s && p - s < 18 => {
            let m = 10i64.pow(p - s) - 1;
            (-m, m)
        }
        TypeKind::Numeric {
            precision: Some(p),
            scale: Some(s),
        } if p == s => (0, 0),
        _ => (i64::MIN / 4, i64::MAX / 4),
    }
}

fn column_scale(kind: &TypeKind) -> u32 {
    match kind {
        TypeKind::Numeric { scale: Some(s), .. } => (*s).min(18),
        TypeKind::Numeric { scale: None, .. } | TypeKind::Money => 2,
        _ => 0,
    }
}

fn lower_ascii(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Produces one scalar value.
pub fn scalar_value(ctx: CellContext<'_>) -> Value {
    use GeneratorKind as G;
    let CellContext {
        column,
        kind,
        rng,
        unique_index,
    } = ctx;
    let ty = &column.kind;
    let integer = ty.is_integer();
    let scale = column_scale(ty);
    let (rule_lo, rule_hi) = rule_bounds(&column.rules, integer, scale);
    let (type_lo, type_hi) = type_int_range(ty);
    let num_range = |min: f64, max: f64| -> (f64, f64) {
        let lo = rule_lo.unwrap_or(min).max(type_lo as f64);
        let hi = rule_hi.unwrap_or(max).min(type_hi as f64);
        // A rule range outside the default range replaces it.
        let lo = if lo > hi { rule_lo.unwrap_or(lo) } else { lo };
        let hi = if lo > hi { rule_hi.unwrap_or(lo) } else { hi };
        (lo, hi.max(lo))
    };
    let number = |v: f64, rng: &mut ChaCha8Rng| -> Value {
        let _ = rng;
        if integer {
            Value::Int(v.round() as i64)
        } else if matches!(ty, TypeKind::Float32 | TypeKind::Float64) {
            Value::Float((v * 100.0).round() / 100.0)
        } else {
            let p = 10f64.powi(scale as i32);
            Value::Decimal {
                units: (v * p).round() as i128,
                scale,
            }
        }
    };
    let text = |s: String| -> Value { Value::Text(s) };
    let value = match kind {
        G::Sequence => {
            let base = rule_lo.map_or(1, |l| l as i64);
            let i = unique_index.unwrap_or(0) as i64;
            if integer {
                Value::Int(base + i)
            } else {
                number((base + i) as f64, rng)
            }
        }
        G::Integer { .. } | G::Quantity if unique_index.is_some() => {
            let min = match kind {
                G::Integer { min, .. } => *min,
                _ => 1,
            };
            let base = rule_lo.map_or(min, |l| l as i64);
            let i = unique_index.unwrap_or(0) as i64;
            if integer {
                Value::Int(base + i)
            } else {
                number((base + i) as f64, rng)
            }
        }
        G::Integer { min, max } => {
            let (lo, hi) = num_range(*min as f64, *max as f64);
            let v = rng.random_range(lo as i64..=hi as i64);
            number(v as f64, rng)
        }
        G::Quantity => {
            let (lo, hi) = num_range(1.0, 20.0);
            let v = rng.random_range(lo as i64..=hi as i64);
            number(v as f64, rng)
        }
        G::Decimal { min, max } | G::Float { min, max } => {
            let (lo, hi) = num_range(*min, *max);
            let v = if let Some(i) = unique_index {
                lo.floor() + i as f64 + rng.random_range(0.0..0.99)
            } else {
                rng.random_range(lo..=hi)
            };
            number(v, rng)
        }
        G::Price => {
            let (lo, hi) = num_range(0.5, 999.99);
            let whole = if let Some(i) = unique_index {
                lo.floor() as i64 + i as i64
            } else {
                rng.random_range(lo.ceil() as i64..=(hi.floor() as i64).max(lo.ceil() as i64))
            };
            let cents = [99, 49, 0, 95][rng.random_range(0..4usize)];
            let mut v = whole as f64 + f64::from(cents) / 100.0;
            if v > hi && unique_index.is_none() {
                v = whole as f64;
            }
            if v < lo {
                v = lo;
            }
            if integer {
                Value::Int(whole)
            } else {
                number(v, rng)
            }
        }
        G::Boolean => Value::Bool(rng.random_bool(0.5)),
        G::FirstName => text(with_suffix(
            FirstName().fake_with_rng(rng),
            unique_index,
            " ",
        )),
        G::LastName => text(with_suffix(
            LastName().fake_with_rng(rng),
            unique_index,
            " ",
        )),
        G::FullName => {
            let first: String = FirstName().fake_with_rng(rng);
            let last: String = LastName().fake_with_rng(rng);
            text(with_suffix(format!("{first} {last}"), unique_index, " "))
        }
        G::Username => {
            let first: String = FirstName().fake_with_rng(rng);
            let n: u32 = rng.random_range(1..100);
            let mut s = lower_ascii(&first);
            match unique_index {
                Some(i) => {
                    let _ = write!(s, "{}", i + 1);
                }
                None => {
                    let _ = write!(s, "{n}");
                }
            }
            text(s)
        }
        G::Email => {
            let first: String = FirstName().fake_with_rng(rng);
            let last: String = LastName().fake_with_rng(rng);
            let domain = DOMAINS[rng.random_range(0..DOMAINS.len())];
            let mut local = format!("{}.{}", lower_ascii(&first), lower_ascii(&last));
            match unique_index {
                Some(i) => {
                    let _ = write!(local, ".{}", i + 1);
                }
                None => {
                    let _ = write!(local, "{}", rng.random_range(1..1000u32));
                }
            }
            let max = text_limit(ty).unwrap_or(u32::MAX) as usize;
            let keep = max.saturating_sub(domain.len() + 1);
            if local.len() > keep {
                // Keep the distinguishing suffix when the column is short.
                let cut = local.len() - keep;
                local = local[cut..].to_string();
            }
            text(format!("{local}@{domain}"))
        }
        G::Phone => {
            let n = match unique_index {
                Some(i) => i,
                None => rng.random_range(0..10_000_000u64),
            };
            text(format!(
                "+1-555-{:03}-{:04}",
                (n / 10_000) % 1_000,
                n % 10_000
            ))
        }
        G::Company => text(with_suffix(
            CompanyName().fake_with_rng(rng),
            unique_index,
            " ",
        )),
        G::JobTitle => text(with_suffix(
            Profession().fake_with_rng(rng),
            unique_index,
            " ",
        )),
        G::StreetAddress => {
            let number: String = BuildingNumber().fake_with_rng(rng);
            let street: String = StreetName().fake_with_rng(rng);
            let suffix: String = StreetSuffix().fake_with_rng(rng);
            text(with_suffix(
                format!("{number} {street} {suffix}"),
                unique_index,
                " ",
            ))
        }
        G::City => text(with_suffix(
            CityName().fake_with_rng(rng),
            unique_index,
            " ",
        )),
        G::Region => text(with_suffix(
            StateName().fake_with_rng(rng),
            unique_index,
            " ",
        )),
        G::Country => text(with_suffix(
            CountryName().fake_with_rng(rng),
            unique_index,
            " ",
        )),
        G::CountryCode => match unique_index {
            Some(i) => text(base26(i, 2)),
            None => text(CountryCode().fake_with_rng(rng)),
        },
        G::PostalCode => match unique_index {
            Some(i) => text(format!("{:05}", i % 100_000)),
            None => text(ZipCode().fake_with_rng(rng)),
        },
        G::Url => {
            let words: Vec<String> = Words(2..4).fake_with_rng(rng);
            let slug = with_suffix(words.join("-"), unique_index, "-");
            text(format!("https://example.com/{}", slug.to_ascii_lowercase()))
        }
        G::Slug => {
            let words: Vec<String> = Words(2..4).fake_with_rng(rng);
            text(with_suffix(words.join("-"), unique_index, "-").to_ascii_lowercase())
        }
        G::Code => {
            let n = match unique_index {
                Some(i) => i + 1,
                None => rng.random_range(1..1_000_000u64),
            };
            if let Some(limit) = text_limit(ty).filter(|l| *l < 10) {
                text(base36(n, limit as usize))
            } else {
                let prefix = lower_ascii(&column.name).to_ascii_uppercase();
                let prefix: String = prefix.chars().take(3).collect();
                let prefix = if prefix.is_empty() {
                    "C".into()
                } else {
                    prefix
                };
                text(format!("{prefix}-{n:06}"))
            }
        }
        G::Word => text(with_suffix(Word().fake_with_rng(rng), unique_index, "-")),
        G::Title => {
            let words: Vec<String> = Words(1..4).fake_with_rng(rng);
            let title: Vec<String> = words.iter().map(|w| capitalise(w)).collect();
            text(with_suffix(title.join(" "), unique_index, " "))
        }
        G::Sentence => text(with_suffix(
            Sentence(3..10).fake_with_rng(rng),
            unique_index,
            " ",
        )),
        G::Paragraph => text(with_suffix(
            Paragraph(1..4).fake_with_rng(rng),
            unique_index,
            " ",
        )),
        G::Currency => match unique_index {
            Some(i) => text(base26(i, 3)),
            None => text(CURRENCIES[rng.random_range(0..CURRENCIES.len())].to_string()),
        },
        G::Color => {
            let c = match unique_index {
                Some(i) => i % 0x100_0000,
                None => rng.random_range(0..0x100_0000u64),
            };
            text(format!("#{c:06x}"))
        }
        G::Token => {
            let mut s = String::with_capacity(40);
            if let Some(i) = unique_index {
                let _ = write!(s, "{i:08x}");
            }
            while s.len() < 40 {
                let _ = write!(s, "{:08x}", rng.random::<u32>());
            }
            text(s)
        }
        G::Vocabulary { values } => match (values.is_empty(), unique_index) {
            (true, _) => Value::Null,
            (false, Some(i)) => text(with_suffix(
                values[(i as usize) % values.len()].clone(),
                Some(i),
                " ",
            )),
            (false, None) => text(values[rng.random_range(0..values.len())].clone()),
        },
        G::OneOf { values } => {
            if values.is_empty() {
                Value::Null
            } else {
                let i = match unique_index {
                    Some(i) => (i as usize) % values.len(),
                    None => rng.random_range(0..values.len()),
                };
                text(values[i].clone())
            }
        }
        G::Date | G::BirthDate | G::Timestamp => {
            let (from, to) = if matches!(kind, G::BirthDate) {
                (days_from_civil(1950, 1, 1), days_from_civil(2005, 12, 31))
            } else {
                (
                    days_from_civil(DATE_FROM.0, DATE_FROM.1, DATE_FROM.2),
                    days_from_civil(DATE_TO.0, DATE_TO.1, DATE_TO.2),
                )
            };
            let day = match unique_index {
                Some(i) if matches!(ty, TypeKind::Date) => from + i as i64,
                _ => rng.random_range(from..=to),
            };
            if matches!(ty, TypeKind::Date) {
                Value::Date(day)
            } else {
                let secs = match unique_index {
                    Some(i) => from * 86_400 + i as i64 * 61,
                    None => day * 86_400 + rng.random_range(0..86_400i64),
                };
                Value::Timestamp(secs)
            }
        }
        G::Time => {
            let s = rng.random_range(0..86_400u32);
            text(format!(
                "{:02}:{:02}:{:02}",
                s / 3600,
                (s / 60) % 60,
                s % 60
            ))
        }
        G::Interval => {
            let minutes = match unique_index {
                Some(i) => i + 1,
                None => rng.random_range(1..60 * 24 * 30u64),
            };
            text(format!("{minutes} minutes"))
        }
        G::Uuid => {
            let mut b: [u8; 16] = rng.random();
            if let Some(i) = unique_index {
                b[8..16].copy_from_slice(&i.to_be_bytes());
            }
            b[6] = (b[6] & 0x0f) | 0x40;
            // The variant bits overwrite the top two bits of byte 8, which are zero for every
            // index below 2^56: unique indexes stay distinct.
            b[8] = (b[8] & 0x3f) | 0x80;
            text(format_uuid(&b))
        }
        G::Json => {
            let word: String = Word().fake_with_rng(rng);
            let n: u32 = rng.random_range(0..1000);
            let id = unique_index.map_or(String::new(), |i| format!("\"id\": {i}, "));
            text(format!(
                "{{{id}\"tag\": \"{word}\", \"score\": {n}, \"active\": {}}}",
                rng.random_bool(0.5)
            ))
        }
        G::Bytes => {
            let mut s = String::from("\\x");
            if let Some(i) = unique_index {
                let _ = write!(s, "{i:016x}");
            }
            for _ in 0..8 {
                let _ = write!(s, "{:02x}", rng.random::<u8>());
            }
            text(s)
        }
        G::IpAddress => match unique_index {
            Some(i) => text(format!("2001:db8::{:x}:{:x}", i >> 16, i & 0xffff)),
            None => {
                let nets = ["192.0.2", "198.51.100", "203.0.113"];
                let net = nets[rng.random_range(0..3usize)];
                text(format!("{net}.{}", rng.random_range(1..255u32)))
            }
        },
        G::MacAddress => {
            let mut b: [u8; 6] = rng.random();
            if let Some(i) = unique_index {
                b[2..6].copy_from_slice(&(i as u32).to_be_bytes());
            }
            b[0] = (b[0] & 0xfc) | 0x02;
            text(format!(
                "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                b[0], b[1], b[2], b[3], b[4], b[5]
            ))
        }
    };
    fit_text(value, column)
}

fn capitalise(w: &str) -> String {
    let mut c = w.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

fn with_suffix(base: String, unique_index: Option<u64>, sep: &str) -> String {
    match unique_index {
        Some(i) => format!("{base}{sep}{}", i + 1),
        None => base,
    }
}

fn base36(mut n: u64, width: usize) -> String {
    const DIGITS: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut out = vec![b'0'; width];
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(n % 36) as usize];
        n /= 36;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn base26(mut n: u64, width: usize) -> String {
    let mut out = vec![b'A'; width];
    for slot in out.iter_mut().rev() {
        *slot = b'A' + (n % 26) as u8;
        n /= 26;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn format_uuid(b: &[u8; 16]) -> String {
    let mut s = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        let _ = write!(s, "{byte:02x}");
    }
    s
}

fn text_limit(ty: &TypeKind) -> Option<u32> {
    match ty {
        TypeKind::Text { max_len } => *max_len,
        TypeKind::Char { len } => Some(*len),
        _ => None,
    }
}

/// Applies length limits (type and check constraints) to text values, keeping the end of
/// the text, where unique values carry their distinguishing suffix.
fn fit_text(value: Value, column: &Column) -> Value {
    let Value::Text(s) = value else {
        return value;
    };
    if !column.kind.is_text() {
        return Value::Text(s);
    }
    let mut max = text_limit(&column.kind).map(|l| l as usize);
    let mut min = match column.kind {
        TypeKind::Char { len } => Some(len as usize),
        _ => None,
    };
    for r in &column.rules {
        if let ColumnRule::Length { min: lo, max: hi } = r {
            if let Some(lo) = lo {
                min = Some(min.map_or(*lo as usize, |m| m.max(*lo as usize)));
            }
            if let Some(hi) = hi {
                max = Some(max.map_or(*hi as usize, |m| m.min(*hi as usize)));
            }
        }
    }
    let mut s = s;
    let len = s.chars().count();
    if let Some(max) = max
        && len > max
    {
        // Keep the start and the last few characters (a unique suffix survives).
        let tail_len = 8.min(max / 2);
        let head: String = s.chars().take(max - tail_len).collect();
        let tail: String = s.chars().skip(len - tail_len).collect();
        s = format!("{head}{tail}");
    }
    if let Some(min) = min {
        let len = s.chars().count();
        if len < min {
            s.extend(std::iter::repeat_n('x', min - len));
        }
    }
    Value::Text(s)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn column(name: &str, kind: TypeKind) -> Column {
        Column {
            name: name.into(),
            type_name: String::new(),
            kind,
            not_null: true,
            has_default: false,
            identity_always: false,
            generated: false,
            sequence: None,
            rules: Vec::new(),
        }
    }

    fn gen_one(col: &Column, row: u64, unique: bool) -> Value {
        let kind = heuristic_kind("users", col).unwrap();
        let key = stream_key(1, "public", "users", &col.name);
        let mut rng = cell_rng(&key, row);
        scalar_value(CellContext {
            column: col,
            kind: &kind,
            rng: &mut rng,
            unique_index: unique.then_some(row),
        })
    }

    #[test]
    fn dates_round_trip() {
        let mut s = String::new();
        write_date(days_from_civil(2024, 2, 29), &mut s);
        assert_eq!(s, "2024-02-29");
        s.clear();
        write_date(0, &mut s);
        assert_eq!(s, "1970-01-01");
    }

    #[test]
    fn decimals_are_written_with_their_scale() {
        let mut s = String::new();
        write_decimal(-1205, 2, &mut s);
        assert_eq!(s, "-12.05");
    }

    #[test]
    fn emails_are_on_reserved_domains_and_unique_when_asked() {
        let col = column("email", TypeKind::Text { max_len: Some(40) });
        let mut seen = std::collections::HashSet::new();
        for row in 0..2000 {
            let Value::Text(e) = gen_one(&col, row, true) else {
                panic!("not text")
            };
            assert!(e.len() <= 40, "{e}");
            let domain = e.split('@').nth(1).unwrap();
            assert!(DOMAINS.contains(&domain), "{e}");
            assert!(seen.insert(e));
        }
    }

    #[test]
    fn same_key_and_row_give_the_same_value() {
        let col = column("name", TypeKind::Text { max_len: None });
        assert_eq!(gen_one(&col, 5, false), gen_one(&col, 5, false));
        assert_ne!(gen_one(&col, 5, false), gen_one(&col, 6, false));
    }

    #[test]
    fn check_ranges_bound_numbers() {
        let mut col = column(
            "rating",
            TypeKind::Numeric {
                precision: Some(3),
                scale: Some(1),
            },
        );
        col.rules.push(ColumnRule::Min {
            value: 1.0,
            inclusive: true,
        });
        col.rules.push(ColumnRule::Max {
            value: 5.0,
            inclusive: false,
        });
        for row in 0..500 {
            match gen_one(&col, row, false) {
                Value::Decimal { units, scale: 1 } => assert!((10..50).contains(&units)),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn short_unique_codes_fit_their_column() {
        let col = column("code", TypeKind::Char { len: 4 });
        let mut seen = std::collections::HashSet::new();
        for row in 0..3000 {
            let Value::Text(c) = gen_one(&col, row, true) else {
                panic!()
            };
            assert_eq!(c.len(), 4);
            assert!(seen.insert(c));
        }
    }
}
