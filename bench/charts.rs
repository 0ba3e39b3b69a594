//! The PNG charts of the report (plotters), written next to results.json (bench/plots/ by default).

use std::path::Path;

use crate::clock::say;
use crate::e2o::E2oResult;
use crate::refresh::RefreshPoint;
use crate::reload::ReloadPoint;
use crate::routable::RoutableResult;

pub fn load_font() {
    use plotters::style::FontStyle;
    for path in [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
    ] {
        if let Ok(bytes) = std::fs::read(path) {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return;
            }
        }
    }
    say("WARNING: no DejaVuSans.ttf found; plots will have no text");
}

pub fn plot_routable(
    results: &[RoutableResult],
    path: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let xmax = results
        .iter()
        .map(|r| r.existing)
        .max()
        .unwrap_or(0)
        .max(100) as f64
        * 1.05;
    // Log scale: the medians are ~100 ms, a controller backlog can put a p99 at seconds.
    let ymax = results
        .iter()
        .map(|r| r.stats.p99_ms)
        .fold(1000.0, f64::max)
        * 1.5;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Time to routable after `docker-compose up -d` returns (Traefik)",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..xmax, (20f64..ymax).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("existing routes of the same kind in the cluster")
        .y_desc("milliseconds (log scale)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style(("sans-serif", 15))
        .draw()?;
    let series = [
        ("ingress", "Ingress", RGBColor(31, 119, 180)),
        ("gateway", "HTTPRoute", RGBColor(214, 39, 40)),
    ];
    for (api, label, color) in series {
        let rs: Vec<&RoutableResult> = results
            .iter()
            .filter(|r| r.api == api && r.stats.n > 0)
            .collect();
        if rs.is_empty() {
            continue;
        }
        for (which, dashed) in [("p50", false), ("p99", true)] {
            let pts: Vec<(f64, f64)> = rs
                .iter()
                .map(|r| {
                    (
                        r.existing as f64,
                        if which == "p50" {
                            r.stats.p50_ms
                        } else {
                            r.stats.p99_ms
                        },
                    )
                })
                .collect();
            let style = if dashed {
                color.mix(0.5).stroke_width(2)
            } else {
                color.stroke_width(3)
            };
            chart
                .draw_series(LineSeries::new(pts.clone(), style))?
                .label(format!("{label} {which}"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            chart.draw_series(pts.iter().map(|p| Circle::new(*p, 4, color.filled())))?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}

pub fn plot_e2o(results: &[E2oResult], path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let xmax = results.iter().map(|r| r.stats.max_ms).fold(50.0, f64::max) * 1.05;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Docker `start` event to Service + Ingress seen by a watch (CDF)",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..xmax, 0f64..1.0f64)?;
    chart
        .configure_mesh()
        .x_desc("milliseconds")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_desc("fraction of compositions")
        .label_style(("sans-serif", 15))
        .draw()?;
    let colors = [RGBColor(31, 119, 180), RGBColor(214, 39, 40)];
    for (r, color) in results.iter().zip(colors) {
        let mut v = r.samples_ms.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len().max(1) as f64;
        let pts: Vec<(f64, f64)> = v
            .iter()
            .enumerate()
            .map(|(i, x)| (*x, (i + 1) as f64 / n))
            .collect();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(3)))?
            .label(format!(
                "--debounce {} (p99 {:.0} ms)",
                r.debounce, r.stats.p99_ms
            ))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    root.present()?;
    Ok(())
}

/// The refresh curve: time to routable against the routes a controller holds, p50 and p99, one
/// colour per controller (and scope).
pub fn plot_refresh(
    points: &[RefreshPoint],
    path: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let xmax = points.iter().map(|p| p.fillers).max().unwrap_or(0).max(100) as f64 * 1.05;
    let ymax = points.iter().map(|p| p.stats.p99_ms).fold(1000.0, f64::max) * 1.5;
    // The pod scope's points may lie far below the composition scope's.
    let ymin = points
        .iter()
        .map(|p| p.stats.p50_ms)
        .filter(|v| *v > 0.0)
        .fold(20.0, f64::min)
        * 0.7;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "New composition: `up -d` returns → first 200 through the controller",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..xmax, (ymin..ymax).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("routes (Ingresses of its class) the controller holds")
        .y_desc("milliseconds (log scale)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style(("sans-serif", 15))
        .draw()?;
    // One series per controller, scope and run (points kept from an earlier run are drawn as
    // their own line: another run, another load on the machine).
    let mut series: Vec<(String, String, bool)> = Vec::new();
    for p in points {
        let key = (p.controller.clone(), p.scope.clone(), p.earlier_run);
        if !series.contains(&key) {
            series.push(key);
        }
    }
    let palette = [
        RGBColor(31, 119, 180),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(255, 127, 14),
        RGBColor(140, 86, 75),
    ];
    for ((controller, scope, earlier), color) in series.iter().zip(palette.iter().cycle()) {
        let color = *color;
        let ps: Vec<&RefreshPoint> = points
            .iter()
            .filter(|p| {
                &p.controller == controller
                    && &p.scope == scope
                    && p.earlier_run == *earlier
                    && p.stats.n > 0
            })
            .collect();
        let run = if *earlier { ", earlier run" } else { "" };
        for (which, dashed) in [("p50", false), ("p99", true)] {
            let pts: Vec<(f64, f64)> = ps
                .iter()
                .map(|p| {
                    let v = if dashed {
                        p.stats.p99_ms
                    } else {
                        p.stats.p50_ms
                    };
                    (p.fillers as f64, v)
                })
                .collect();
            let style = if dashed {
                color.mix(0.5).stroke_width(2)
            } else {
                color.stroke_width(3)
            };
            chart
                .draw_series(LineSeries::new(pts.clone(), style))?
                .label(format!("{controller} ({scope} scope{run}) {which}"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            chart.draw_series(pts.iter().map(|p| Circle::new(*p, 4, color.filled())))?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}

/// The reload floor of nginx and haproxy: a new host's write + check + reload → 200 against the
/// hosts configured, p50 and max.
pub fn plot_reload(points: &[ReloadPoint], path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let xmax = points.iter().map(|p| p.hosts).max().unwrap_or(0).max(100) as f64 * 1.05;
    let ymax = points.iter().map(|p| p.total.max_ms).fold(1000.0, f64::max) * 1.5;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "New host on a reloading proxy: write + check + reload → first 200",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..xmax, (5f64..ymax).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("hosts configured (a server block / a backend each)")
        .y_desc("milliseconds (log scale)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style(("sans-serif", 15))
        .draw()?;
    for (proxy, color) in [
        ("nginx", RGBColor(214, 39, 40)),
        ("haproxy", RGBColor(148, 103, 189)),
    ] {
        let ps: Vec<&ReloadPoint> = points
            .iter()
            .filter(|p| p.proxy == proxy && p.total.n > 0)
            .collect();
        for (which, dashed) in [("p50", false), ("max", true)] {
            let pts: Vec<(f64, f64)> = ps
                .iter()
                .map(|p| {
                    let v = if dashed {
                        p.total.max_ms
                    } else {
                        p.total.p50_ms
                    };
                    (p.hosts as f64, v)
                })
                .collect();
            let style = if dashed {
                color.mix(0.5).stroke_width(2)
            } else {
                color.stroke_width(3)
            };
            chart
                .draw_series(LineSeries::new(pts.clone(), style))?
                .label(format!("{proxy} {which}"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            chart.draw_series(pts.iter().map(|p| Circle::new(*p, 4, color.filled())))?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}
