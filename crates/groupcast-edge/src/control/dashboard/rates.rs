//! The dashboard's rates: each edge's counters, sampled at every build,
//! give its message rates (over [`RATE_WINDOW`]) and its recent errors and
//! disconnects (over [`ERROR_WINDOW`]); samples are bounded
//! ([`MAX_SAMPLES`]) and forgotten when nobody looks.

use std::collections::VecDeque;
use std::time::Instant;

use super::*;

/// An edge's counters, as its `/metrics` has them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Counters {
    /// `groupcast_messages_in_total`, every kind.
    pub messages_in: u64,
    /// `groupcast_messages_out_total`, every kind.
    pub messages_out: u64,
    /// `groupcast_errors_total` by code.
    pub errors: BTreeMap<u32, u64>,
    /// `groupcast_disconnects_total` by code.
    pub disconnects: BTreeMap<u32, u64>,
}

impl Counters {
    /// This process's counters, read from the Prometheus recorder.
    pub(super) fn read() -> Counters {
        Counters::parse(&crate::metrics::install().render())
    }

    /// The counters in Prometheus text.
    fn parse(text: &str) -> Counters {
        let mut c = Counters::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.trim().parse::<f64>() else {
                continue;
            };
            let value = value.max(0.0) as u64;
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            let code = || {
                labels
                    .trim_end_matches('}')
                    .split(',')
                    .find_map(|kv| kv.strip_prefix("code=\""))
                    .and_then(|v| v.strip_suffix('"'))
                    .and_then(|v| v.parse::<u32>().ok())
            };
            match name {
                "groupcast_messages_in_total" => c.messages_in += value,
                "groupcast_messages_out_total" => c.messages_out += value,
                "groupcast_errors_total" => {
                    if let Some(code) = code() {
                        *c.errors.entry(code).or_default() += value;
                    }
                }
                "groupcast_disconnects_total" => {
                    if let Some(code) = code() {
                        *c.disconnects.entry(code).or_default() += value;
                    }
                }
                _ => {}
            }
        }
        c
    }
}

/// Adds the new samples, fills in each row's message rates and sums the
/// errors and disconnects of the edges that reported.
pub(super) fn rates(d: &Dashboard, rows: &mut [(EdgeRow, Option<Counters>)]) -> ErrorsPart {
    let now = Instant::now();
    let mut samples = d.samples.lock();
    // Edges no longer listed go, with their samples.
    samples.retain(|uid, _| rows.iter().any(|(r, _)| r.uid == *uid));
    let mut totals: BTreeMap<(&'static str, u32), u64> = BTreeMap::new();
    let mut recent: BTreeMap<(&'static str, u32), u64> = BTreeMap::new();
    let mut window: Option<Duration> = None;
    let mut edges = 0;
    for (row, counters) in rows.iter_mut() {
        let Some(counters) = counters.take() else {
            continue;
        };
        edges += 1;
        let q = samples.entry(row.uid.clone()).or_default();
        q.push_back((now, counters));
        prune(q, now);
        let (t1, newest) = q.back().expect("just pushed");
        if let Some((t0, base)) = rate_base(q, now) {
            let secs = t1.duration_since(*t0).as_secs_f64();
            let per_second = |a: u64, b: u64| Some(round2(a.saturating_sub(b) as f64 / secs));
            row.messages_in_per_second = per_second(newest.messages_in, base.messages_in);
            row.messages_out_per_second = per_second(newest.messages_out, base.messages_out);
        }
        let oldest = (q.len() > 1).then(|| q.front().expect("not empty"));
        if let Some((t0, _)) = oldest {
            let span = t1.duration_since(*t0);
            window = Some(window.map_or(span, |w| w.max(span)));
        }
        for (kind, now_map, base_map) in [
            ("error", &newest.errors, oldest.map(|(_, c)| &c.errors)),
            (
                "disconnect",
                &newest.disconnects,
                oldest.map(|(_, c)| &c.disconnects),
            ),
        ] {
            for (code, n) in now_map {
                *totals.entry((kind, *code)).or_default() += n;
                if let Some(base) = base_map {
                    let before = base.get(code).copied().unwrap_or(0);
                    *recent.entry((kind, *code)).or_default() += n.saturating_sub(before);
                }
            }
        }
    }
    let codes = totals
        .into_iter()
        .map(|((kind, code), total)| CodeRow {
            kind,
            code,
            name: code_name(kind, code),
            total,
            recent: window.map(|_| recent.get(&(kind, code)).copied().unwrap_or(0)),
        })
        .collect();
    ErrorsPart {
        edges,
        window_seconds: window.map(|w| round2(w.as_secs_f64())),
        codes,
    }
}

/// Drops samples no longer needed: the front stays only while it is the
/// last one at least [`ERROR_WINDOW`] old (the base of the error window),
/// and never when it is much older than that (nobody looked for a while).
fn prune(q: &mut VecDeque<(Instant, Counters)>, now: Instant) {
    let stale = ERROR_WINDOW + RATE_WINDOW;
    while q.len() > 1
        && (now.duration_since(q[1].0) >= ERROR_WINDOW || now.duration_since(q[0].0) > stale)
    {
        q.pop_front();
    }
    while q.len() > MAX_SAMPLES {
        q.pop_front();
    }
}

/// The sample message rates are measured from: the oldest within
/// [`RATE_WINDOW`], else the one before the newest; none when there is only
/// the newest or it is too close to be meaningful.
fn rate_base(q: &VecDeque<(Instant, Counters)>, now: Instant) -> Option<&(Instant, Counters)> {
    let before_newest = q.len().checked_sub(2)?;
    let base = q
        .iter()
        .take(before_newest + 1)
        .find(|(t, _)| now.duration_since(*t) <= RATE_WINDOW)
        .unwrap_or(&q[before_newest]);
    let newest = q.back()?;
    (newest.0.duration_since(base.0) >= Duration::from_millis(200)).then_some(base)
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn code_name(kind: &str, code: u32) -> String {
    let known = if kind == "error" {
        ErrorCode::ALL
            .iter()
            .find(|e| e.code == code)
            .map(|e| e.message.to_string())
    } else {
        u16::try_from(code)
            .ok()
            .and_then(DisconnectCode::from_code)
            .map(|d| d.reason.to_string())
    };
    known.unwrap_or_else(|| match (kind, code) {
        ("disconnect", 4000..=4999) => "application (API disconnect)".into(),
        _ => String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP groupcast_errors_total Protocol error replies sent, by code.
# TYPE groupcast_errors_total counter
groupcast_errors_total{code="102"} 3
groupcast_errors_total{code="103"} 1
groupcast_disconnects_total{code="3008"} 2
groupcast_messages_in_total{kind="connect"} 5
groupcast_messages_in_total{kind="relay"} 7
groupcast_messages_out_total{kind="pub"} 11
groupcast_messages_in_totally_else 100
groupcast_command_duration_seconds_bucket{method="connect",le="0.001"} 4
"#;

    #[test]
    fn counters_are_read_from_prometheus_text() {
        let c = Counters::parse(TEXT);
        assert_eq!(c.messages_in, 12);
        assert_eq!(c.messages_out, 11);
        assert_eq!(c.errors, BTreeMap::from([(102, 3), (103, 1)]));
        assert_eq!(c.disconnects, BTreeMap::from([(3008, 2)]));
    }

    fn sample(at: Instant, messages_in: u64, errors: u64) -> (Instant, Counters) {
        (
            at,
            Counters {
                messages_in,
                errors: BTreeMap::from([(102, errors)]),
                ..Default::default()
            },
        )
    }

    fn edge_row(uid: &str) -> EdgeRow {
        EdgeRow {
            name: uid.into(),
            uid: uid.into(),
            version: String::new(),
            address: None,
            uptime: 0,
            connections: 0,
            users: 0,
            subscriptions: 0,
            channels: 0,
            messages_in_per_second: None,
            messages_out_per_second: None,
            this: false,
            reported: true,
            error: None,
        }
    }

    #[test]
    fn rates_come_from_earlier_samples_and_none_before_the_second() {
        let d = Dashboard::default();
        let counters = |messages_in, errors| {
            let (_, c) = sample(Instant::now(), messages_in, errors);
            Some(c)
        };
        let mut rows = vec![(edge_row("a"), counters(100, 4))];
        let first = rates(&d, &mut rows);
        assert_eq!(rows[0].0.messages_in_per_second, None);
        assert_eq!(first.window_seconds, None);
        assert_eq!(first.codes[0].total, 4);
        assert_eq!(first.codes[0].recent, None);
        // Pretend the first sample was taken 2 s ago.
        {
            let mut s = d.samples.lock();
            let q = s.get_mut("a").unwrap();
            q[0].0 = Instant::now() - Duration::from_secs(2);
        }
        let mut rows = vec![(edge_row("a"), counters(140, 6)), (edge_row("gone"), None)];
        let second = rates(&d, &mut rows);
        let r = rows[0].0.messages_in_per_second.unwrap();
        assert!((19.0..=20.5).contains(&r), "{r}");
        assert_eq!(second.codes[0].recent, Some(2));
        assert_eq!(second.codes[0].name, "unknown channel");
        assert_eq!(second.edges, 1);
        assert!(!d.samples.lock().contains_key("gone"));
    }

    #[test]
    fn samples_stay_bounded_and_forget_what_nobody_looked_at() {
        let now = Instant::now();
        let mut q: VecDeque<_> = (0..400)
            .map(|i| sample(now - Duration::from_millis(400 - i), i, 0))
            .collect();
        prune(&mut q, now);
        assert_eq!(q.len(), MAX_SAMPLES);
        // Ten minutes without a look: the old sample is no base.
        let mut q: VecDeque<_> = [
            sample(now - Duration::from_secs(600), 0, 0),
            sample(now, 10, 0),
        ]
        .into();
        prune(&mut q, now);
        assert_eq!(q.len(), 1);
        assert!(rate_base(&q, now).is_none());
        // The base of the error window is the last sample a minute old.
        let mut q: VecDeque<_> = [
            sample(now - Duration::from_secs(65), 0, 0),
            sample(now - Duration::from_secs(61), 0, 0),
            sample(now - Duration::from_secs(30), 0, 0),
            sample(now, 0, 0),
        ]
        .into();
        prune(&mut q, now);
        assert_eq!(q.len(), 3);
        assert_eq!(now.duration_since(q[0].0).as_secs(), 61);
    }
}
