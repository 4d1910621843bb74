//! Domain names as users type them: validation and route suffixes.
//!
//! Names arrive from command lines, config files and the proxy's `--upstream` flag, so this
//! module checks them strictly before any query goes out. It does not resolve anything and
//! does not accept IDNA (Unicode) names: every label must already be ASCII.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use hickory_resolver::proto::rr::Name;

/// Maximum length of one label in octets, the DNS limit that hickory-proto's `Name` also
/// enforces.
const MAX_LABEL_LEN: usize = 63;

/// Maximum length of a name in its text form without the trailing dot. The DNS limit is 255
/// octets on the wire, which leaves 253 characters of text after the length octets.
const MAX_NAME_LEN: usize = 253;

/// Error of parsing a domain name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("invalid name: the name is empty")]
    Empty,
    #[error("invalid name {name:?}: longer than {MAX_NAME_LEN} characters")]
    TooLong { name: String },
    #[error("invalid name {name:?}: empty label (two dots in a row, or a leading dot)")]
    EmptyLabel { name: String },
    #[error("invalid name {name:?}: label {label:?} is longer than {MAX_LABEL_LEN} characters")]
    LabelTooLong { name: String, label: String },
    #[error(
        "invalid name {name:?}: label {label:?} may contain only letters, digits, '-' and '_', \
         and may not start or end with '-'"
    )]
    BadLabel { name: String, label: String },
    #[error("invalid name {name:?}: SRV lookups need a service name, not an IP address")]
    IpAddressForSrv { name: String },
}

/// Returns the address when `input` is an IPv4 or IPv6 literal (`10.0.0.5`, `::1` or
/// `[::1]`), which is looked up as itself with no query sent, as getaddrinfo does.
pub fn parse_ip_literal(input: &str) -> Option<IpAddr> {
    if let Ok(ip) = input.parse::<IpAddr>() {
        return Some(ip);
    }
    let bracketed = input.strip_prefix('[')?.strip_suffix(']')?;
    bracketed.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6)
}

/// Parses a host or service name into a fully qualified, lowercase [`Name`].
///
/// A trailing dot is optional. Labels are letters, digits, `-` and `_` (the underscore appears
/// in SRV owner names such as `_web._tcp.service.consul`).
///
/// # Errors
///
/// Returns [`NameError`] naming the input and the offending label.
pub fn parse_name(input: &str) -> Result<Name, NameError> {
    let text = input.strip_suffix('.').unwrap_or(input);
    if text.is_empty() {
        return Err(NameError::Empty);
    }
    if text.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong {
            name: input.to_owned(),
        });
    }

    for label in text.split('.') {
        check_label(input, label)?;
    }

    // The checks above leave nothing that hickory's parser rejects. A failure here would be
    // a bug in them, so it is reported as a bad name instead of a panic.
    let mut name = Name::from_ascii(text).map_err(|_| NameError::BadLabel {
        name: input.to_owned(),
        label: text.to_owned(),
    })?;
    name.set_fqdn(true);
    Ok(name.to_lowercase())
}

fn check_label(name: &str, label: &str) -> Result<(), NameError> {
    if label.is_empty() {
        return Err(NameError::EmptyLabel {
            name: name.to_owned(),
        });
    }
    if label.len() > MAX_LABEL_LEN {
        return Err(NameError::LabelTooLong {
            name: name.to_owned(),
            label: label.to_owned(),
        });
    }

    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    if !label.chars().all(allowed) || label.starts_with('-') || label.ends_with('-') {
        return Err(NameError::BadLabel {
            name: name.to_owned(),
            label: label.to_owned(),
        });
    }
    Ok(())
}

/// The domain suffix a route serves, such as `consul` or `ts.net`. The root suffix `.`
/// matches every name.
///
/// Matching works on whole labels: `web.service.consul` is under `consul`, `xconsul` is not.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Suffix {
    name: Name,
    label: String,
}

impl Suffix {
    /// Returns the root suffix, which matches every name.
    pub fn root() -> Self {
        Self {
            name: Name::root(),
            label: ".".to_owned(),
        }
    }

    /// Returns true when `name` equals this suffix or lies below it.
    pub fn contains(&self, name: &Name) -> bool {
        self.name.zone_of(name)
    }

    /// Returns the suffix as a fully qualified name.
    pub fn name(&self) -> &Name {
        &self.name
    }

    /// Returns the number of labels, used to prefer the longest matching suffix.
    pub fn label_count(&self) -> usize {
        usize::from(self.name.num_labels())
    }

    /// Returns the text form without a trailing dot (`.` for the root), used as a metric label.
    pub fn as_str(&self) -> &str {
        &self.label
    }
}

impl FromStr for Suffix {
    type Err = NameError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        if input == "." {
            return Ok(Self::root());
        }

        let name = parse_name(input)?;
        let label = name.to_ascii().trim_end_matches('.').to_owned();
        Ok(Self { name, label })
    }
}

impl fmt::Display for Suffix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_name_accepts_service_names() {
        let name = parse_name("Web.Service.Consul").expect("valid name");
        assert_eq!(name.to_ascii(), "web.service.consul.");
        assert!(name.is_fqdn());

        let srv = parse_name("_web._tcp.service.consul.").expect("underscores are valid");
        assert_eq!(srv.num_labels(), 4);
    }

    #[test]
    fn parse_name_rejects_bad_input() {
        assert_eq!(parse_name(""), Err(NameError::Empty));
        assert_eq!(parse_name("."), Err(NameError::Empty));
        assert!(matches!(
            parse_name("a..b"),
            Err(NameError::EmptyLabel { .. })
        ));
        assert!(matches!(
            parse_name(".a"),
            Err(NameError::EmptyLabel { .. })
        ));
        assert!(matches!(
            parse_name("we b.consul"),
            Err(NameError::BadLabel { .. })
        ));
        assert!(matches!(
            parse_name("-web.consul"),
            Err(NameError::BadLabel { .. })
        ));
        assert!(matches!(
            parse_name("web-.consul"),
            Err(NameError::BadLabel { .. })
        ));
        assert!(matches!(
            parse_name("wéb.consul"),
            Err(NameError::BadLabel { .. })
        ));

        let long_label = "a".repeat(64);
        assert!(matches!(
            parse_name(&format!("{long_label}.consul")),
            Err(NameError::LabelTooLong { .. })
        ));
        let long_name = vec!["abcdefgh"; 30].join(".");
        assert!(matches!(
            parse_name(&long_name),
            Err(NameError::TooLong { .. })
        ));
    }

    #[test]
    fn ip_literal_forms() {
        assert_eq!(
            parse_ip_literal("127.0.0.1"),
            Some("127.0.0.1".parse().unwrap())
        );
        assert_eq!(parse_ip_literal("::1"), Some("::1".parse().unwrap()));
        assert_eq!(parse_ip_literal("[::1]"), Some("::1".parse().unwrap()));
        assert_eq!(parse_ip_literal("[127.0.0.1]"), None);
        assert_eq!(parse_ip_literal("127.0.0.1.example.com"), None);
        assert_eq!(parse_ip_literal("web.service.consul"), None);
    }

    #[test]
    fn parse_name_error_names_input() {
        let message = parse_name("bad name.consul").unwrap_err().to_string();
        assert!(message.contains("\"bad name.consul\""), "{message}");
        assert!(message.contains("\"bad name\""), "{message}");
    }

    #[test]
    fn suffix_matches_on_label_boundaries() {
        let consul: Suffix = "consul".parse().unwrap();
        assert!(consul.contains(&parse_name("web.service.consul").unwrap()));
        assert!(consul.contains(&parse_name("consul").unwrap()));
        assert!(!consul.contains(&parse_name("xconsul").unwrap()));
        assert!(!consul.contains(&parse_name("consul.example.com").unwrap()));

        let root = Suffix::root();
        assert!(root.contains(&parse_name("example.com").unwrap()));
        assert_eq!(root.label_count(), 0);
        assert_eq!(root.as_str(), ".");
    }

    #[test]
    fn suffix_text_is_lowercase_without_dot() {
        let suffix: Suffix = "TS.Net.".parse().unwrap();
        assert_eq!(suffix.as_str(), "ts.net");
        assert_eq!(suffix.label_count(), 2);
    }

    /// Checks 20,000 random strings of name characters and troublemakers. None makes parsing
    /// panic, and every accepted name's text form parses to the same name.
    #[test]
    fn parse_name_random_inputs() {
        const ALPHABET: &[u8] = b"abcZ09-_...abc:\xe9";
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };

        let mut parsed = 0;
        for _ in 0..20_000 {
            let len = (next() % 12) as usize;
            let input: String = (0..len)
                .map(|_| char::from(ALPHABET[(next() % ALPHABET.len() as u64) as usize]))
                .collect();

            let Ok(name) = parse_name(&input) else {
                continue;
            };
            parsed += 1;
            let text = name.to_ascii();
            assert_eq!(parse_name(&text).as_ref(), Ok(&name), "{input:?}");
            assert!(text.ends_with('.'), "{input:?} -> {text:?}");

            let suffix: Suffix = input.parse().expect("a valid name is a valid suffix");
            assert!(suffix.contains(&name), "{input:?}");
        }
        assert!(parsed > 1000, "only {parsed} inputs were valid names");
    }
}
