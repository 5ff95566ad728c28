//! Samples per figure and path, medians, ratios, and the markdown tables.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::paths::PathKind;

/// A figure the bench reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Figure {
    Upload,
    Download,
    Rps1,
    P50x1,
    P99x1,
    Rps32,
    P50x32,
    P99x32,
    ProxyRps1,
    ProxyP50x1,
    ProxyP99x1,
    ProxyRps32,
    ProxyP50x32,
    ProxyP99x32,
    ConnSeq,
    ConnPar,
    GitClone,
    CpuUpload,
    CpuDownload,
    CpuReq1,
    CpuReq32,
    CpuProxyReq1,
    CpuProxyReq32,
    CpuConnSeq,
    CpuConnPar,
    CpuGitClone,
    RssIdleClient,
    RssIdleServer,
    RssHeldClient,
    RssHeldServer,
    RssAfterClient,
    RssAfterServer,
}

impl Figure {
    pub const ALL: [Figure; 32] = [
        Figure::Upload,
        Figure::Download,
        Figure::Rps1,
        Figure::P50x1,
        Figure::P99x1,
        Figure::Rps32,
        Figure::P50x32,
        Figure::P99x32,
        Figure::ProxyRps1,
        Figure::ProxyP50x1,
        Figure::ProxyP99x1,
        Figure::ProxyRps32,
        Figure::ProxyP50x32,
        Figure::ProxyP99x32,
        Figure::ConnSeq,
        Figure::ConnPar,
        Figure::GitClone,
        Figure::CpuUpload,
        Figure::CpuDownload,
        Figure::CpuReq1,
        Figure::CpuReq32,
        Figure::CpuProxyReq1,
        Figure::CpuProxyReq32,
        Figure::CpuConnSeq,
        Figure::CpuConnPar,
        Figure::CpuGitClone,
        Figure::RssIdleClient,
        Figure::RssIdleServer,
        Figure::RssHeldClient,
        Figure::RssHeldServer,
        Figure::RssAfterClient,
        Figure::RssAfterServer,
    ];

    /// Row label; `{held}` and `{par}` are filled from [`Labels`].
    fn label(self, l: &Labels) -> String {
        match self {
            Figure::Upload => "bulk upload, iperf3 1 stream (Gbit/s)".into(),
            Figure::Download => "bulk download, iperf3 -R 1 stream (Gbit/s)".into(),
            Figure::Rps1 => "HTTP req/s, wrk 1 conn".into(),
            Figure::ProxyRps1 => "HTTP req/s, 1 conn, gangway `kind = http` service".into(),
            Figure::ProxyP50x1 => "HTTP p50, 1 conn, `kind = http` (ms)".into(),
            Figure::ProxyP99x1 => "HTTP p99, 1 conn, `kind = http` (ms)".into(),
            Figure::ProxyRps32 => "HTTP req/s, 32 conns, gangway `kind = http` service".into(),
            Figure::ProxyP50x32 => "HTTP p50, 32 conns, `kind = http` (ms)".into(),
            Figure::ProxyP99x32 => "HTTP p99, 32 conns, `kind = http` (ms)".into(),
            Figure::CpuProxyReq1 => "tunnel CPU per request, 1 conn, `kind = http` (µs)".into(),
            Figure::CpuProxyReq32 => "tunnel CPU per request, 32 conns, `kind = http` (µs)".into(),
            Figure::P50x1 => "HTTP p50 latency, 1 conn (ms)".into(),
            Figure::P99x1 => "HTTP p99 latency, 1 conn (ms)".into(),
            Figure::Rps32 => "HTTP req/s, wrk 32 conns".into(),
            Figure::P50x32 => "HTTP p50 latency, 32 conns (ms)".into(),
            Figure::P99x32 => "HTTP p99 latency, 32 conns (ms)".into(),
            Figure::ConnSeq => "new TCP conns/s, 1 at a time".into(),
            Figure::ConnPar => format!("new TCP conns/s, {} in parallel", l.par),
            Figure::GitClone => "git clone --bare over smart HTTP (s)".into(),
            Figure::CpuUpload => "tunnel CPU per GB uploaded (s)".into(),
            Figure::CpuDownload => "tunnel CPU per GB downloaded (s)".into(),
            Figure::CpuReq1 => "tunnel CPU per HTTP request, 1 conn (µs)".into(),
            Figure::CpuReq32 => "tunnel CPU per HTTP request, 32 conns (µs)".into(),
            Figure::CpuConnSeq => "tunnel CPU per new conn, 1 at a time (µs)".into(),
            Figure::CpuConnPar => format!("tunnel CPU per new conn, {} in parallel (µs)", l.par),
            Figure::CpuGitClone => "tunnel CPU per git clone (s)".into(),
            Figure::RssIdleClient => "RSS idle, client side: agent / wstunnel client (MiB)".into(),
            Figure::RssIdleServer => "RSS idle, server side: relay / wstunnel server (MiB)".into(),
            Figure::RssHeldClient => format!("RSS {} open conns, client side (MiB)", l.held),
            Figure::RssHeldServer => format!("RSS {} open conns, server side (MiB)", l.held),
            Figure::RssAfterClient => "RSS after the load, client side (MiB)".into(),
            Figure::RssAfterServer => "RSS after the load, server side (MiB)".into(),
        }
    }

    fn decimals(self, v: f64) -> usize {
        match self {
            Figure::Rps1
            | Figure::Rps32
            | Figure::ProxyRps1
            | Figure::ProxyRps32
            | Figure::ConnSeq
            | Figure::ConnPar => 0,
            Figure::Upload
            | Figure::Download
            | Figure::CpuUpload
            | Figure::CpuDownload
            | Figure::GitClone
            | Figure::CpuGitClone => 2,
            Figure::CpuReq1
            | Figure::CpuReq32
            | Figure::CpuProxyReq1
            | Figure::CpuProxyReq32
            | Figure::CpuConnSeq
            | Figure::CpuConnPar => 1,
            _ if v < 1.0 => 3,
            _ => 1,
        }
    }

    /// The figure whose value on other paths a ratio divides by: the
    /// `kind = http` figures (Gangway only) compare with plain HTTP.
    fn base(self) -> Figure {
        match self {
            Figure::ProxyRps1 => Figure::Rps1,
            Figure::ProxyP50x1 => Figure::P50x1,
            Figure::ProxyP99x1 => Figure::P99x1,
            Figure::ProxyRps32 => Figure::Rps32,
            Figure::ProxyP50x32 => Figure::P50x32,
            Figure::ProxyP99x32 => Figure::P99x32,
            Figure::CpuProxyReq1 => Figure::CpuReq1,
            Figure::CpuProxyReq32 => Figure::CpuReq32,
            f => f,
        }
    }

    /// Tunnel memory and CPU figures have no direct value; `kind = http`
    /// figures exist only for Gangway.
    fn is_tunnel_only(self) -> bool {
        self.base() != self
            || matches!(
                self,
                Figure::CpuUpload
                    | Figure::CpuDownload
                    | Figure::CpuReq1
                    | Figure::CpuReq32
                    | Figure::CpuConnSeq
                    | Figure::CpuConnPar
                    | Figure::CpuGitClone
                    | Figure::RssIdleClient
                    | Figure::RssIdleServer
                    | Figure::RssHeldClient
                    | Figure::RssHeldServer
                    | Figure::RssAfterClient
                    | Figure::RssAfterServer
            )
    }
}

/// Parameters that appear in row labels.
#[derive(Debug, Clone, Copy)]
pub struct Labels {
    pub held: usize,
    pub par: usize,
}

/// All samples of a run, plus error counts and notes.
#[derive(Debug, Default)]
pub struct Results {
    samples: BTreeMap<(Figure, PathKind), Vec<f64>>,
    errors: BTreeMap<PathKind, Vec<String>>,
}

impl Results {
    pub fn add(&mut self, figure: Figure, path: PathKind, value: f64) {
        self.samples.entry((figure, path)).or_default().push(value);
    }

    /// Records a failure or a non-zero error count (listed under the table).
    pub fn error(&mut self, path: PathKind, what: String) {
        self.errors.entry(path).or_default().push(what);
    }

    pub fn median(&self, figure: Figure, path: PathKind) -> Option<f64> {
        self.samples.get(&(figure, path)).and_then(|v| median(v))
    }

    /// The main table: medians, and ratios to direct and to wstunnel.
    pub fn table(&self, paths: &[PathKind], labels: Labels) -> String {
        let mut s = String::new();
        s.push_str("| figure (median of rounds) |");
        for p in paths {
            let _ = write!(s, " {} |", p.label());
        }
        let ratios = ratio_columns(paths);
        for (a, b) in &ratios {
            let _ = write!(s, " {} ÷ {} |", a.label(), b.label());
        }
        s.push('\n');
        s.push_str("| --- |");
        for _ in 0..paths.len() + ratios.len() {
            s.push_str(" ---: |");
        }
        s.push('\n');
        for f in Figure::ALL {
            if paths.iter().all(|p| self.median(f, *p).is_none()) {
                continue;
            }
            let _ = write!(s, "| {} |", f.label(&labels));
            for p in paths {
                match self.median(f, *p) {
                    Some(v) => {
                        let _ = write!(s, " {v:.*} |", f.decimals(v));
                    }
                    None if f.base() != f && *p != PathKind::Gangway => s.push_str(" — |"),
                    None if f.is_tunnel_only() && *p == PathKind::Direct => s.push_str(" — |"),
                    None => s.push_str(" n/a |"),
                }
            }
            for (a, b) in &ratios {
                let denominator = if self.median(f, *b).is_some() {
                    f
                } else {
                    f.base()
                };
                match (self.median(f, *a), self.median(denominator, *b)) {
                    (Some(x), Some(y)) if y > 0.0 => {
                        let _ = write!(s, " {:.2}× |", x / y);
                    }
                    _ => s.push_str(" — |"),
                }
            }
            s.push('\n');
        }
        s
    }

    /// Every round's value, to show the spread behind each median.
    pub fn rounds_table(&self, paths: &[PathKind], labels: Labels) -> String {
        let rounds = self.samples.values().map(Vec::len).max().unwrap_or(0);
        let mut s = String::from("| figure | path |");
        for r in 1..=rounds {
            let _ = write!(s, " round {r} |");
        }
        s.push_str("\n| --- | --- |");
        for _ in 0..rounds {
            s.push_str(" ---: |");
        }
        s.push('\n');
        for f in Figure::ALL {
            for p in paths {
                let Some(v) = self.samples.get(&(f, *p)) else {
                    continue;
                };
                let _ = write!(s, "| {} | {} |", f.label(&labels), p.label());
                for x in v {
                    let _ = write!(s, " {x:.*} |", f.decimals(*x));
                }
                for _ in v.len()..rounds {
                    s.push_str(" |");
                }
                s.push('\n');
            }
        }
        s
    }

    /// Errors seen, one line each; empty if none.
    pub fn error_lines(&self) -> Vec<String> {
        self.errors
            .iter()
            .flat_map(|(p, v)| v.iter().map(move |e| format!("{}: {e}", p.label())))
            .collect()
    }
}

/// Ratio columns: gangway against each other path present.
fn ratio_columns(paths: &[PathKind]) -> Vec<(PathKind, PathKind)> {
    let mut v = Vec::new();
    for (a, b) in [
        (PathKind::Gangway, PathKind::Direct),
        (PathKind::Gangway, PathKind::Wstunnel),
        (PathKind::Wstunnel, PathKind::Direct),
    ] {
        if paths.contains(&a) && paths.contains(&b) {
            v.push((a, b));
        }
    }
    v
}

/// Median (mean of the middle two for an even count).
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }

    #[test]
    fn table_has_ratio_columns_and_dashes_for_direct_memory() {
        let mut r = Results::default();
        r.add(Figure::Upload, PathKind::Direct, 40.0);
        r.add(Figure::Upload, PathKind::Gangway, 10.0);
        r.add(Figure::Upload, PathKind::Wstunnel, 5.0);
        r.add(Figure::RssIdleClient, PathKind::Gangway, 8.0);
        r.add(Figure::RssIdleClient, PathKind::Wstunnel, 4.0);
        let paths = [PathKind::Direct, PathKind::Gangway, PathKind::Wstunnel];
        let t = r.table(&paths, Labels { held: 100, par: 16 });
        assert!(
            t.contains("| 40.00 | 10.00 | 5.00 | 0.25× | 2.00× | 0.12× |"),
            "{t}"
        );
        assert!(t.contains("| — | 8.0 | 4.0 | — | 2.00× | — |"), "{t}");
    }
}
