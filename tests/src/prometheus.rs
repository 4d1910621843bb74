//! A scraper and parser for the Prometheus text format (version 0.0.4), for tests that
//! read a metrics endpoint the way Prometheus does: one plain HTTP GET, then the
//! samples of the page.
//!
//! The parser reads sample lines only (`name{label="value",...} value [timestamp]`),
//! skips `#` lines, and undoes the format's three escapes in label values (`\\`, `\"`,
//! `\n`). It fails on any line it cannot read, so a malformed page fails the test.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Time limit of one scrape; only a hung endpoint reaches it.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(30);

/// One sample of a page.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Fetches `GET /metrics` from `addr` and returns the body of a 200 response.
///
/// # Errors
/// When the connection fails, the scrape times out, or the status is not 200.
pub async fn scrape(addr: SocketAddr) -> anyhow::Result<String> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        anyhow::Ok(response)
    };
    let response = tokio::time::timeout(SCRAPE_TIMEOUT, exchange)
        .await
        .with_context(|| format!("scrape of {addr} timed out"))?
        .with_context(|| format!("failed to scrape {addr}"))?;

    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("response from {addr} has no header end: {response:?}"))?;
    ensure!(
        head.starts_with("HTTP/1.1 200 "),
        "scrape of {addr} returned {head:?}"
    );
    Ok(body.to_owned())
}

/// Parses every sample of `page`.
///
/// # Errors
/// Names the first line that is not a valid sample.
pub fn parse(page: &str) -> anyhow::Result<Vec<Sample>> {
    page.lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .map(|line| parse_sample(line).with_context(|| format!("invalid sample line {line:?}")))
        .collect()
}

/// Returns the value of the one sample named `name` whose labels include `labels`.
///
/// # Errors
/// When no sample or more than one sample matches.
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> anyhow::Result<f64> {
    let matches: Vec<&Sample> = samples
        .iter()
        .filter(|sample| {
            sample.name == name
                && labels
                    .iter()
                    .all(|(key, value)| sample.labels.get(*key).map(String::as_str) == Some(*value))
        })
        .collect();
    match matches.as_slice() {
        [sample] => Ok(sample.value),
        [] => bail!("no sample {name} with labels {labels:?}"),
        _ => bail!(
            "{} samples {name} match labels {labels:?}: {matches:?}",
            matches.len()
        ),
    }
}

fn parse_sample(line: &str) -> anyhow::Result<Sample> {
    let name_end = line.find(['{', ' ']).context("no value after the name")?;
    let name = &line[..name_end];
    ensure!(!name.is_empty(), "empty metric name");

    let (labels, rest) = if line[name_end..].starts_with('{') {
        parse_labels(&line[name_end + 1..])?
    } else {
        (BTreeMap::new(), &line[name_end..])
    };

    // A timestamp may follow the value.
    let value_text = rest
        .split_whitespace()
        .next()
        .context("no value after the labels")?;
    let value = match value_text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        text => text
            .parse()
            .with_context(|| format!("value {text:?} is not a number"))?,
    };
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Parses `key="value",...}` and returns the labels and the text after the `}`.
fn parse_labels(mut text: &str) -> anyhow::Result<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    loop {
        text = text.trim_start_matches(',');
        if let Some(rest) = text.strip_prefix('}') {
            return Ok((labels, rest));
        }
        let (key, rest) = text.split_once("=\"").context("label without =\"")?;
        let (value, rest) = read_quoted(rest)?;
        labels.insert(key.trim().to_owned(), value);
        text = rest;
    }
}

/// Reads an escaped label value up to its closing quote and returns the value and the
/// text after the quote.
fn read_quoted(text: &str) -> anyhow::Result<(String, &str)> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((index, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &text[index + 1..])),
            '\\' => match chars.next() {
                Some((_, '\\')) => value.push('\\'),
                Some((_, '"')) => value.push('"'),
                Some((_, 'n')) => value.push('\n'),
                other => bail!("invalid escape {other:?} in a label value"),
            },
            c => value.push(c),
        }
    }
    bail!("label value has no closing quote")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_reads_labels_and_escapes() {
        let page = "# HELP x_total Things.\n\
                    # TYPE x_total counter\n\
                    x_total{listener=\"a/b\",note=\"say \\\"hi\\\", \\\\ok\\nnext\"} 42\n\
                    plain 1.5 1700000000000\n\
                    hist_bucket{le=\"+Inf\"} 3\n\
                    up +Inf\n";
        let samples = parse(page).unwrap();
        assert_eq!(samples.len(), 4);
        assert_eq!(samples[0].labels["listener"], "a/b");
        assert_eq!(samples[0].labels["note"], "say \"hi\", \\ok\nnext");
        assert_eq!(samples[0].value, 42.0);
        assert_eq!(samples[1].name, "plain");
        assert_eq!(samples[1].value, 1.5);
        assert_eq!(
            value(&samples, "hist_bucket", &[("le", "+Inf")]).unwrap(),
            3.0
        );
        assert_eq!(samples[3].value, f64::INFINITY);
    }

    #[test]
    fn parse_rejects_broken_lines() {
        for line in ["x{a=\"1\" 2", "x{a=\"1\\q\"} 2", "x", "x{} nan-ish"] {
            assert!(parse(line).is_err(), "{line:?} parsed");
        }
    }

    #[test]
    fn value_needs_exactly_one_match() {
        let samples = parse("x{a=\"1\"} 1\nx{a=\"2\"} 2\n").unwrap();
        assert_eq!(value(&samples, "x", &[("a", "2")]).unwrap(), 2.0);
        assert!(value(&samples, "x", &[]).is_err());
        assert!(value(&samples, "y", &[]).is_err());
    }
}
