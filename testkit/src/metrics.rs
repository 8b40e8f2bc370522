//! Prometheus text exposition, read the way the tests need it: the sum of a counter
//! over the label sets that match, or one sample by its labels.

/// A sample's labels: `(key, value)` with the quotes removed.
type Labels<'a> = Vec<(&'a str, &'a str)>;

/// One sample line: metric name, its labels, value.
fn parse_line(line: &str) -> Option<(&str, Labels<'_>, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => return None,
    };
    let (labels, value) = if let Some(body) = rest.strip_prefix('{') {
        let end = body.rfind('}')?;
        (parse_labels(&body[..end]), body[end + 1..].trim())
    } else {
        (Vec::new(), rest.trim())
    };
    // A timestamp may follow the value.
    let value = value.split_whitespace().next()?.parse().ok()?;
    Some((name, labels, value))
}

fn parse_labels(body: &str) -> Labels<'_> {
    let mut out = Vec::new();
    let mut rest = body;
    while let Some(eq) = rest.find("=\"") {
        let key = rest[..eq].trim().trim_start_matches(',').trim();
        let after = &rest[eq + 2..];
        // The closing quote is the first one not escaped.
        let mut end = None;
        let mut escaped = false;
        for (i, c) in after.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => {
                    end = Some(i);
                    break;
                }
                _ => escaped = false,
            }
        }
        let Some(end) = end else { break };
        out.push((key, &after[..end]));
        rest = &after[end + 1..];
    }
    out
}

/// Whether `labels` contains every `k="v"` of `want`.
fn matches(labels: &[(&str, &str)], want: &[&str]) -> bool {
    want.iter().all(|w| {
        let Some((k, v)) = w.split_once('=') else {
            return false;
        };
        let v = v.trim_matches('"');
        labels.iter().any(|(lk, lv)| *lk == k && *lv == v)
    })
}

/// The sum of every sample of `name` whose labels include each `k="v"` of `labels`
/// (all samples when `labels` is empty); 0 when there is none.
pub fn sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter_map(parse_line)
        .filter(|(n, l, _)| *n == name && matches(l, labels))
        .map(|(_, _, v)| v)
        .sum()
}

/// The sum of every sample of `name`, whatever its labels.
pub fn total(text: &str, name: &str) -> f64 {
    sum(text, name, &[])
}

/// The value of the first sample of `name` whose labels include each `k="v"` of
/// `labels` (a gauge), if exposed.
pub fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter_map(parse_line)
        .find(|(n, l, _)| *n == name && matches(l, labels))
        .map(|(_, _, v)| v)
}

/// `GET {base}/metrics` (`base` like `http://127.0.0.1:9000`); panics when the call
/// fails.
pub async fn scrape(base: &str) -> String {
    try_scrape(base)
        .await
        .unwrap_or_else(|e| panic!("GET {base}/metrics: {e}"))
}

/// `GET {base}/metrics`, or the error (a relay that is down).
pub async fn try_scrape(base: &str) -> Result<String, reqwest::Error> {
    reqwest::get(format!("{base}/metrics"))
        .await?
        .error_for_status()?
        .text()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP x a counter\n# TYPE x counter\n\
        x{a=\"1\",b=\"2\"} 3\n\
        x{a=\"1\",b=\"3\"} 4\n\
        xa{a=\"1\"} 100\n\
        xy 5\n\
        x 1\n\
        g{reason=\"a,b=\\\"c\\\"\",k=\"v\"} 9 1700000000\n";

    #[test]
    fn sum_filters_by_name_and_labels() {
        assert_eq!(sum(TEXT, "x", &["a=\"1\""]), 7.0);
        assert_eq!(sum(TEXT, "x", &["b=\"3\""]), 4.0);
        assert_eq!(sum(TEXT, "x", &["a=\"1\"", "b=\"2\""]), 3.0);
        assert_eq!(sum(TEXT, "x", &[]), 8.0);
        assert_eq!(sum(TEXT, "nope", &[]), 0.0);
    }

    #[test]
    fn a_label_key_matches_whole_not_as_a_suffix() {
        assert_eq!(sum(TEXT, "x", &["xa=\"1\""]), 0.0);
    }

    #[test]
    fn sample_reads_quoted_values_with_commas_and_a_timestamp() {
        assert_eq!(sample(TEXT, "g", &["k=\"v\""]), Some(9.0));
        assert_eq!(sample(TEXT, "g", &["k=\"w\""]), None);
        assert_eq!(sample(TEXT, "xy", &[]), Some(5.0));
    }
}
