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

/// The cumulative buckets of histogram `name` (`name_bucket{le=...}` samples), summed
/// over every other label set: `(upper bound, observations at or below it)`, sorted by
/// bound, `+Inf` last. Buckets of several scrapes (several relays) add up by adding
/// their counts bound by bound ([`merge_buckets`]).
pub fn buckets(text: &str, name: &str) -> Vec<(f64, f64)> {
    let bucket = format!("{name}_bucket");
    let mut out: Vec<(f64, f64)> = Vec::new();
    for (n, labels, v) in text.lines().filter_map(parse_line) {
        if n != bucket {
            continue;
        }
        let Some(le) = labels.iter().find(|(k, _)| *k == "le").map(|(_, v)| *v) else {
            continue;
        };
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            match le.parse::<f64>() {
                Ok(x) => x,
                Err(_) => continue,
            }
        };
        merge_buckets(&mut out, &[(le, v)]);
    }
    out
}

/// Adds the buckets `more` into `into` (same bounds add their counts).
pub fn merge_buckets(into: &mut Vec<(f64, f64)>, more: &[(f64, f64)]) {
    for &(le, v) in more {
        match into.iter_mut().find(|(b, _)| *b == le) {
            Some((_, c)) => *c += v,
            None => into.push((le, v)),
        }
    }
    into.sort_by(|a, b| a.0.total_cmp(&b.0));
}

/// The `q`-quantile (0..=1) of cumulative `buckets`, as the upper bound of the bucket it
/// falls in (what a bucketed histogram can say); `None` without observations. A
/// quantile in the `+Inf` bucket is the largest finite bound.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let count = buckets.last()?.1;
    if count <= 0.0 {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * count).ceil().max(1.0);
    let finite = buckets
        .iter()
        .rev()
        .find(|(b, _)| b.is_finite())
        .map(|(b, _)| *b);
    buckets.iter().find(|(_, c)| *c >= rank).map(|(b, _)| {
        if b.is_finite() {
            *b
        } else {
            finite.unwrap_or(*b)
        }
    })
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

    #[test]
    fn histogram_buckets_add_up_over_label_sets_and_scrapes() {
        let text = "h_bucket{k=\"a\",le=\"0.1\"} 2\n\
            h_bucket{k=\"a\",le=\"1\"} 5\n\
            h_bucket{k=\"a\",le=\"+Inf\"} 6\n\
            h_bucket{k=\"b\",le=\"0.1\"} 1\n\
            h_bucket{k=\"b\",le=\"1\"} 1\n\
            h_bucket{k=\"b\",le=\"+Inf\"} 1\n\
            h_sum 3.5\nh_count 7\n";
        let mut b = buckets(text, "h");
        assert_eq!(b, vec![(0.1, 3.0), (1.0, 6.0), (f64::INFINITY, 7.0)]);
        assert_eq!(quantile(&b, 0.4), Some(0.1));
        assert_eq!(quantile(&b, 0.5), Some(1.0));
        // The top observation is past every finite bound: the largest one stands in.
        assert_eq!(quantile(&b, 1.0), Some(1.0));
        merge_buckets(&mut b, &[(0.1, 10.0), (1.0, 10.0), (f64::INFINITY, 10.0)]);
        assert_eq!(quantile(&b, 0.5), Some(0.1));
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(quantile(&buckets("", "h"), 0.5), None);
    }
}
