//! The run's outputs: `results.json` (everything), `results.md` (the table
//! with the machine's ceilings and the ratios against them) and SVG plots of
//! latency percentiles and of throughput over time.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use crate::ceilings::Ceilings;
use crate::driver::RunResult;

#[derive(Serialize)]
pub struct Report {
    pub date_unix: u64,
    pub cores: usize,
    pub broker: String,
    pub ceilings: Ceilings,
    pub runs: Vec<RunResult>,
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}")).unwrap_or_else(|| "–".into())
}

pub fn markdown(r: &Report) -> String {
    let c = &r.ceilings;
    let mut s = String::new();
    let _ = writeln!(s, "Machine: {} cores. Ceilings measured in this run:", r.cores);
    let _ = writeln!(s);
    let _ = writeln!(s, "| ceiling | MB/s |");
    let _ = writeln!(s, "|---|---|");
    let _ = writeln!(s, "| disk, sequential 1 MiB writes (page cache) | {:.0} |", c.disk_write_mb_s);
    let _ = writeln!(s, "| disk, sequential 1 MiB writes + fdatasync each | {:.0} |", c.disk_write_fsync_mb_s);
    let _ = writeln!(s, "| loopback TCP, one stream | {:.0} |", c.loopback_mb_s);
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| workload | produced msg/s | MB/s | × fsync'd disk | × loopback | publish p50 / p99 / p99.9 / max ms | end-to-end p50 / p99 / p99.9 / max ms | consumed MB/s | broker CPU (cores) | broker peak RSS MiB (anon) |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
    for run in &r.runs {
        let p = &run.publish_latency;
        let e = &run.end_to_end_latency;
        let lat = |p: &crate::driver::Percentiles| {
            if p.count == 0 {
                "–".to_string()
            } else {
                format!("{:.1} / {:.1} / {:.1} / {:.1}", p.p50_ms, p.p99_ms, p.p999_ms, p.max_ms)
            }
        };
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.1} | {:.2} | {:.3} | {} | {} | {:.1} | {} | {} ({}) |",
            run.label(),
            run.produce_msgs_s,
            run.produce_mb_s,
            run.produce_mb_s / c.disk_write_fsync_mb_s,
            run.produce_mb_s.max(run.consume_mb_s) / c.loopback_mb_s,
            lat(p),
            lat(e),
            run.consume_mb_s,
            opt(run.broker_cpu_cores, 2),
            opt(run.broker_peak_rss_mib, 0),
            opt(run.broker_peak_anon_rss_mib, 0),
        );
    }
    // With several cluster sizes: each run against the same workload on the first size.
    let sizes: std::collections::BTreeSet<u32> = r.runs.iter().map(|run| run.nodes).collect();
    if sizes.len() > 1 {
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "| workload (× the same workload on the first cluster size of this run) | produced msg/s | publish p50 / p99 / p99.9 ms | end-to-end p50 / p99 / p99.9 ms | broker CPU (cores, all nodes) |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|");
        let ratio = |a: Option<f64>, b: Option<f64>| opt(a.zip(b).map(|(a, b)| a / b.max(1e-9)), 2);
        let three = |p: &crate::driver::Percentiles| {
            if p.count == 0 {
                "–".to_string()
            } else {
                format!("{:.1} / {:.1} / {:.1}", p.p50_ms, p.p99_ms, p.p999_ms)
            }
        };
        for run in &r.runs {
            let Some(base) = baseline(r, run) else { continue };
            let _ = writeln!(
                s,
                "| {} | {:.2} | {} | {} | {} |",
                run.label(),
                run.produce_msgs_s / base.produce_msgs_s.max(1e-9),
                three(&run.publish_latency),
                three(&run.end_to_end_latency),
                ratio(run.broker_cpu_cores, base.broker_cpu_cores),
            );
        }
    }
    if r.runs.iter().any(|run| run.round.is_some()) {
        let _ = writeln!(s);
        let _ = writeln!(s, "{}", round_summary(r));
    }
    // Runs compared with the first one of the same invocation (e.g. a
    // topic config's cost: the same workload without it first).
    if let Some(first) = r.runs.first().filter(|_| r.runs.len() > 1 && sizes.len() == 1) {
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "| workload (× the first workload of this run) | produced msg/s | broker CPU (cores) | broker CPU per MB produced |"
        );
        let _ = writeln!(s, "|---|---|---|---|");
        let per_mb = |run: &RunResult| run.broker_cpu_cores.map(|c| c / run.produce_mb_s.max(1e-9));
        let ratio = |a: Option<f64>, b: Option<f64>| opt(a.zip(b).map(|(a, b)| a / b.max(1e-9)), 2);
        for run in &r.runs {
            let _ = writeln!(
                s,
                "| {} | {:.2} | {} | {} |",
                run.label(),
                run.produce_msgs_s / first.produce_msgs_s.max(1e-9),
                ratio(run.broker_cpu_cores, first.broker_cpu_cores),
                ratio(per_mb(run), per_mb(first)),
            );
        }
    }
    let res: Vec<_> = r.runs.iter().filter_map(|run| Some((run, run.broker_produce_residence.as_ref()?))).collect();
    if !res.is_empty() {
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "| the broker's own Produce latency (request read → response written, last minute) | p50 / p99 / p99.9 / max ms | requests |"
        );
        let _ = writeln!(s, "|---|---|---|");
        for (run, p) in res {
            let _ = writeln!(
                s,
                "| {} | {:.2} / {:.2} / {:.2} / {:.2} | {} |",
                run.label(),
                p.p50_ms,
                p.p99_ms,
                p.p999_ms,
                p.max_ms,
                p.count
            );
        }
    }
    let raw: Vec<_> = r.runs.iter().filter_map(|run| Some((run, run.raw_produce.as_ref()?))).collect();
    if !raw.is_empty() {
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "| same ingest by a bare Produce client (pre-encoded ~1 MB requests, 5 in flight) | msg/s | MB/s | × fsync'd disk | request p50 / p99 / p99.9 / max ms | broker CPU (cores) |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|");
        for (run, p) in raw {
            let l = &p.request_latency;
            let _ = writeln!(
                s,
                "| {} | {:.0} | {:.1} | {:.2} | {:.1} / {:.1} / {:.1} / {:.1} | {} |",
                run.label(),
                p.msgs_s,
                p.mb_s,
                p.mb_s / c.disk_write_fsync_mb_s,
                l.p50_ms,
                l.p99_ms,
                l.p999_ms,
                l.max_ms,
                opt(p.broker_cpu_cores, 2)
            );
        }
    }
    let raw: Vec<_> = r.runs.iter().filter_map(|run| Some((run, run.raw_fetch_mb_s?))).collect();
    if !raw.is_empty() {
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "| backlog read by a bare Fetch client (no record decoding) | MB/s | × loopback | broker CPU (cores) |"
        );
        let _ = writeln!(s, "|---|---|---|---|");
        for (run, mb_s) in raw {
            let _ = writeln!(
                s,
                "| {} | {:.0} | {:.2} | {} |",
                run.label(),
                mb_s,
                mb_s / c.loopback_mb_s,
                opt(run.raw_fetch_broker_cpu_cores, 2)
            );
        }
    }
    s
}

/// End-to-end (or, without consumers, publish) latency percentiles of every
/// run, one line per workload, on a log scale.
/// What `run` is compared with: the first run of the same workload in the same round (the
/// first cluster size of the run).
fn baseline<'a>(r: &'a Report, run: &RunResult) -> Option<&'a RunResult> {
    r.runs.iter().find(|b| b.workload == run.workload && b.round == run.round)
}

/// With `--rounds`: per workload and cluster size, the throughput ratio against the first size
/// of the same round, as the median over the rounds with the lowest and highest.
fn round_summary(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| workload (produced msg/s × the first cluster size of the same round) | rounds | median | lowest | highest |"
    );
    let _ = write!(s, "|---|---|---|---|---|");
    let mut keys: Vec<(&str, u32)> = Vec::new();
    for run in &r.runs {
        if !keys.contains(&(run.workload.as_str(), run.nodes)) {
            keys.push((run.workload.as_str(), run.nodes));
        }
    }
    for (workload, nodes) in keys {
        let mut ratios: Vec<f64> = r
            .runs
            .iter()
            .filter(|run| run.workload == workload && run.nodes == nodes)
            .filter_map(|run| {
                let base = baseline(r, run)?;
                Some(run.produce_msgs_s / base.produce_msgs_s.max(1e-9))
            })
            .collect();
        if ratios.is_empty() {
            continue;
        }
        ratios.sort_by(f64::total_cmp);
        let n = ratios.len();
        let median = if n % 2 == 1 { ratios[n / 2] } else { (ratios[n / 2 - 1] + ratios[n / 2]) / 2.0 };
        let label = if nodes > 1 { format!("{workload} · {nodes} nodes") } else { workload.to_string() };
        let _ = write!(s, "\n| {label} | {n} | {median:.2} | {:.2} | {:.2} |", ratios[0], ratios[n - 1]);
    }
    s
}

pub fn latency_plot(r: &Report, path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let series: Vec<(String, [f64; 4])> = r
        .runs
        .iter()
        .filter_map(|run| {
            let p = if run.end_to_end_latency.count > 0 { &run.end_to_end_latency } else { &run.publish_latency };
            (p.count > 0).then(|| (run.label(), [p.p50_ms, p.p99_ms, p.p999_ms, p.max_ms]))
        })
        .collect();
    let top = series.iter().flat_map(|(_, v)| v.iter().copied()).fold(1.0f64, f64::max) * 2.0;
    let mut chart = ChartBuilder::on(&root)
        .caption("latency percentiles (ms, log scale)", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..3f64, (0.01f64..top).log_scale())?;
    chart
        .configure_mesh()
        .x_labels(4)
        .x_label_formatter(&|x| ["p50", "p99", "p99.9", "max"].get(x.round() as usize).unwrap_or(&"").to_string())
        .y_desc("ms")
        .draw()?;
    for (i, (name, v)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                v.iter().enumerate().map(|(x, y)| (x as f64, y.max(0.01))),
                color.stroke_width(2),
            ))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}

/// Produced and consumed records per second over the run.
pub fn throughput_plot(run: &RunResult, path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (900, 400)).into_drawing_area();
    root.fill(&WHITE)?;
    let max_t = run.timeline.last().map(|s| s.second).unwrap_or(1.0).max(1.0);
    let max_y = run.timeline.iter().map(|s| s.produced_msgs_s.max(s.consumed_msgs_s)).fold(1.0f64, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{}: records/s over time", run.label()), ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..max_t, 0f64..max_y)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("records/s")
        .y_label_formatter(&|v| format!("{:.0}k", v / 1000.0))
        .draw()?;
    let produced: Vec<(f64, f64)> = run.timeline.iter().map(|s| (s.second, s.produced_msgs_s)).collect();
    let consumed: Vec<(f64, f64)> = run.timeline.iter().map(|s| (s.second, s.consumed_msgs_s)).collect();
    chart
        .draw_series(LineSeries::new(produced, BLUE.stroke_width(2)))?
        .label("produced (acknowledged)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    chart
        .draw_series(LineSeries::new(consumed, RED.stroke_width(2)))?
        .label("consumed")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}

pub fn write_all(r: &Report, out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("results.json"), serde_json::to_vec_pretty(r)?)?;
    std::fs::write(out.join("results.md"), markdown(r))?;
    latency_plot(r, &out.join("latency.svg"))?;
    for run in &r.runs {
        throughput_plot(run, &out.join(format!("throughput-{}.svg", run.slug)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(workload: &str, nodes: u32, round: u32, msgs_s: f64) -> RunResult {
        RunResult {
            workload: workload.into(),
            nodes,
            round: Some(round),
            produce_msgs_s: msgs_s,
            ..RunResult::default()
        }
    }

    /// Each round's ratio is taken against the first size of that round, not of the run: a
    /// slow first round must not scale the others.
    #[test]
    fn ratios_are_taken_within_each_round_and_their_median_reported() {
        let runs = vec![
            run("w", 1, 1, 300.0),
            run("w", 3, 1, 150.0),
            run("w", 1, 2, 500.0),
            run("w", 3, 2, 300.0),
            run("w", 1, 3, 400.0),
            run("w", 3, 3, 160.0),
        ];
        let report = Report { date_unix: 0, cores: 2, broker: String::new(), ceilings: Default::default(), runs };
        let summary = round_summary(&report);
        assert!(summary.contains("| w · 3 nodes | 3 | 0.50 | 0.40 | 0.60 |"), "{summary}");
        assert!(summary.contains("| w | 3 | 1.00 | 1.00 | 1.00 |"), "{summary}");
        let md = markdown(&report);
        assert!(md.contains("| w · 3 nodes, RF 0 · round 2 | 0.60 |"), "{md}");
    }
}
