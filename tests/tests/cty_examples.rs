//! The cty-msgpack generator against byte sequences worked out from go-cty's and
//! vmihailenco/msgpack's encoding rules (go-cty 1.16+, msgpack v5).

use styx_tests::cty::spec::{
    attr, block, block_attrs, block_list, default, literal, named_attr, object,
};
use styx_tests::cty::{Value, encode_value, encode_with_spec};

/// Spells a string as a msgpack fixstr: length byte, then the bytes.
fn fixstr(text: &str) -> Vec<u8> {
    assert!(text.len() < 32);
    let mut bytes = vec![0xa0 | text.len() as u8];
    bytes.extend_from_slice(text.as_bytes());
    bytes
}

fn concat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// `{ image = "nginx:alpine", ports = ["http"], args = ["-g", "daemon off;"] }`
#[test]
fn example_lists_and_strings() {
    let spec = object([
        ("image", attr("string", true)),
        ("ports", attr("list(string)", false)),
        ("args", attr("list(string)", false)),
    ]);
    let body = Value::object([
        ("image", Value::string("nginx:alpine")),
        ("ports", Value::strings(&["http"])),
        ("args", Value::strings(&["-g", "daemon off;"])),
    ]);

    let expected = concat(&[
        &[0x83],
        &fixstr("args"),
        &[0x92],
        &fixstr("-g"),
        &fixstr("daemon off;"),
        &fixstr("image"),
        &fixstr("nginx:alpine"),
        &fixstr("ports"),
        &[0x91],
        &fixstr("http"),
    ]);
    let bytes = encode_with_spec(&spec, &body).unwrap();
    assert_eq!(bytes.len(), 53);
    assert_eq!(bytes, expected);
}

/// Absent attributes, a Default literal, an unsigned integer form and a number that
/// float64 cannot represent (`0.1`, sent as a string).
#[test]
fn example_absent_defaults_and_numbers() {
    let spec = object([
        ("image", attr("string", true)),
        ("args", attr("list(string)", false)),
        ("command", attr("string", false)),
        (
            "privileged",
            default(named_attr("privileged", "bool", false), literal("false")),
        ),
        ("cpu_weight", attr("number", false)),
        ("labels", attr("map(string)", false)),
        ("scale", attr("number", false)),
    ]);
    let body = Value::object([
        ("image", Value::string("redis:7")),
        ("cpu_weight", Value::number("200")),
        ("labels", Value::object([("tier", Value::string("cache"))])),
        ("scale", Value::number("0.1")),
    ]);

    let expected = concat(&[
        &[0x87],
        &fixstr("args"),
        &[0xc0],
        &fixstr("command"),
        &[0xc0],
        &fixstr("cpu_weight"),
        &[0xcc, 0xc8],
        &fixstr("image"),
        &fixstr("redis:7"),
        &fixstr("labels"),
        &[0x81],
        &fixstr("tier"),
        &fixstr("cache"),
        &fixstr("privileged"),
        &[0xc2],
        &fixstr("scale"),
        &[0xa3, 0x30, 0x2e, 0x31],
    ]);
    let bytes = encode_with_spec(&spec, &body).unwrap();
    assert_eq!(bytes.len(), 84);
    assert_eq!(bytes, expected);
}

/// Blocks: an absent `Block` and `BlockAttrs` are nil, a `BlockList` is an array of
/// objects, and a Default inside the nested block fills `readonly`.
#[test]
fn example_blocks() {
    let mount = object([
        ("source", attr("string", true)),
        ("target", attr("string", true)),
        (
            "readonly",
            default(named_attr("readonly", "bool", false), literal("false")),
        ),
    ]);
    let spec = object([
        ("image", attr("string", false)),
        (
            "auth",
            block(object([
                ("username", attr("string", false)),
                ("password", attr("string", false)),
            ])),
        ),
        ("mount", block_list(mount)),
        ("options", block_attrs("string")),
    ]);
    let body = Value::object([
        ("image", Value::string("postgres:16")),
        (
            "mount",
            Value::List(vec![
                Value::object([
                    ("source", Value::string("/srv/data")),
                    ("target", Value::string("/var/lib/postgresql/data")),
                ]),
                Value::object([
                    ("source", Value::string("/etc/pg")),
                    ("target", Value::string("/etc/postgresql")),
                    ("readonly", Value::Bool(true)),
                ]),
            ]),
        ),
    ]);

    let expected = concat(&[
        &[0x84],
        &fixstr("auth"),
        &[0xc0],
        &fixstr("image"),
        &fixstr("postgres:16"),
        &fixstr("mount"),
        &[0x92],
        &[0x83],
        &fixstr("readonly"),
        &[0xc2],
        &fixstr("source"),
        &fixstr("/srv/data"),
        &fixstr("target"),
        &fixstr("/var/lib/postgresql/data"),
        &[0x83],
        &fixstr("readonly"),
        &[0xc3],
        &fixstr("source"),
        &fixstr("/etc/pg"),
        &fixstr("target"),
        &fixstr("/etc/postgresql"),
        &fixstr("options"),
        &[0xc0],
    ]);
    let bytes = encode_with_spec(&spec, &body).unwrap();
    assert_eq!(bytes.len(), 150);
    assert_eq!(bytes, expected);
}

#[test]
fn empty_block_list_is_empty_array() {
    let spec = object([(
        "mount",
        block_list(object([("target", attr("string", true))])),
    )]);
    let bytes = encode_with_spec(&spec, &Value::object([])).unwrap();
    assert_eq!(bytes, concat(&[&[0x81], &fixstr("mount"), &[0x90]]));
}

#[test]
fn number_forms() {
    let cases: &[(&str, &[u8])] = &[
        ("0", &[0x00]),
        ("127", &[0x7f]),
        ("128", &[0xcc, 0x80]),
        ("256", &[0xcd, 0x01, 0x00]),
        ("70000", &[0xce, 0x00, 0x01, 0x11, 0x70]),
        (
            "4294967296",
            &[0xcf, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00],
        ),
        ("-1", &[0xff]),
        ("-32", &[0xe0]),
        ("-33", &[0xd0, 0xdf]),
        ("-200", &[0xd1, 0xff, 0x38]),
        (
            "1.5",
            &[0xcb, 0x3f, 0xf8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00],
        ),
        ("0.1", &[0xa3, b'0', b'.', b'1']),
        ("1.1", &[0xa3, b'1', b'.', b'1']),
        (
            "-0.25",
            &[0xcb, 0xbf, 0xd0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00],
        ),
        // An integral value written with a fraction is still an integer in cty.
        ("200.0", &[0xcc, 0xc8]),
    ];
    for (text, expected) in cases {
        assert_eq!(
            encode_value(&Value::number(text)),
            *expected,
            "number {text}"
        );
    }

    let mut huge = vec![0xb4];
    huge.extend_from_slice(b"18446744073709551616");
    assert_eq!(encode_value(&Value::number("18446744073709551616")), huge);
}

#[test]
fn literal_defaults_parse() {
    use styx_tests::cty::parse_literal;

    assert_eq!(parse_literal("true").unwrap(), Value::Bool(true));
    assert_eq!(parse_literal("10000").unwrap(), Value::number("10000"));
    assert_eq!(
        parse_literal("\"/usr/local/bin/container\"").unwrap(),
        Value::string("/usr/local/bin/container")
    );
    assert_eq!(parse_literal("[]").unwrap(), Value::List(Vec::new()));
    assert_eq!(
        parse_literal("{ enabled = true, name = \"x\" }").unwrap(),
        Value::object([("enabled", Value::Bool(true)), ("name", Value::string("x"))])
    );
    assert!(parse_literal("now()").is_err());
}

#[test]
fn unknown_attribute_is_rejected() {
    let spec = object([("image", attr("string", true))]);
    let body = Value::object([
        ("image", Value::string("redis")),
        ("imag", Value::string("x")),
    ]);
    let error = encode_with_spec(&spec, &body).unwrap_err();
    assert!(error.0.contains("Unsupported argument \"imag\""), "{error}");
}

#[test]
fn default_attr_without_name_is_rejected() {
    let spec = object([("privileged", default(attr("bool", false), literal("false")))]);
    let error = encode_with_spec(&spec, &Value::object([])).unwrap_err();
    assert!(error.0.contains("Missing name"), "{error}");
}
