//! Server-rendered SVG charts (plotters) shared by every area: scatter plots with labelled
//! points, line charts of several series, grouped bar charts. Pure: data in, SVG text out;
//! plotters escapes every label, so model names and user text are safe to pass.

use plotters::prelude::*;

/// One named series of (x, y) points.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A labelled point of a scatter plot.
#[derive(Debug, Clone)]
pub struct LabelledPoint {
    pub label: String,
    pub x: f64,
    pub y: f64,
    /// Which colour group (e.g. a method); points of a group share a colour and legend entry.
    pub group: String,
}

/// Axis and size settings.
#[derive(Debug, Clone)]
pub struct Frame {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x_range: (f64, f64),
    pub y_range: (f64, f64),
    pub width: u32,
    pub height: u32,
}

impl Frame {
    pub fn new(
        title: &str,
        x_label: &str,
        y_label: &str,
        x_range: (f64, f64),
        y_range: (f64, f64),
    ) -> Self {
        Frame {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            x_range,
            y_range,
            width: 640,
            height: 420,
        }
    }
}

const PALETTE: [RGBColor; 8] = [
    RGBColor(36, 87, 197),
    RGBColor(214, 96, 77),
    RGBColor(18, 122, 60),
    RGBColor(148, 103, 189),
    RGBColor(227, 160, 8),
    RGBColor(23, 190, 207),
    RGBColor(140, 86, 75),
    RGBColor(100, 100, 100),
];

pub fn color(index: usize) -> RGBColor {
    PALETTE[index % PALETTE.len()]
}

/// A range padded so points on the edge stay visible; degenerate ranges widened.
pub fn padded_range(values: impl IntoIterator<Item = f64>, at_least: (f64, f64)) -> (f64, f64) {
    let (mut lo, mut hi) = at_least;
    for v in values.into_iter().filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if hi - lo < 1e-9 {
        hi = lo + 1.0;
    }
    let pad = (hi - lo) * 0.05;
    (lo - pad, hi + pad)
}

fn render(
    frame: &Frame,
    draw: impl FnOnce(&DrawingArea<SVGBackend, plotters::coord::Shift>) -> Result<(), String>,
) -> String {
    let mut svg = String::new();
    {
        let root =
            SVGBackend::with_string(&mut svg, (frame.width, frame.height)).into_drawing_area();
        let result = root
            .fill(&WHITE)
            .map_err(|e| e.to_string())
            .and_then(|_| draw(&root));
        if let Err(e) = result {
            tracing::warn!("chart {:?} failed: {e}", frame.title);
        }
        let _ = root.present();
    }
    svg
}

type XyChart<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// Axes, caption and grid of an x/y chart over the frame's ranges.
fn xy_chart<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    frame: &Frame,
) -> Result<XyChart<'a, 'b>, String> {
    let mut chart = ChartBuilder::on(root)
        .caption(&frame.title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(
            frame.x_range.0..frame.x_range.1,
            frame.y_range.0..frame.y_range.1,
        )
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc(frame.x_label.as_str())
        .y_desc(frame.y_label.as_str())
        .light_line_style(RGBColor(238, 240, 244))
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(chart)
}

/// A scatter plot of labelled points, coloured by group, with a legend.
pub fn scatter(frame: &Frame, points: &[LabelledPoint]) -> String {
    render(frame, |root| {
        let mut chart = xy_chart(root, frame)?;
        let mut groups: Vec<&str> = Vec::new();
        for p in points {
            if !groups.contains(&p.group.as_str()) {
                groups.push(&p.group);
            }
        }
        for (gi, group) in groups.iter().enumerate() {
            let c = color(gi);
            let members: Vec<&LabelledPoint> =
                points.iter().filter(|p| p.group == *group).collect();
            chart
                .draw_series(
                    members
                        .iter()
                        .map(|p| Circle::new((p.x, p.y), 5, c.filled())),
                )
                .map_err(|e| e.to_string())?
                .label(group.to_string())
                .legend(move |(x, y)| Circle::new((x, y), 5, c.filled()));
            chart
                .draw_series(members.iter().map(|p| {
                    Text::new(
                        p.label.clone(),
                        (p.x, p.y),
                        ("sans-serif", 12).into_font().color(&RGBColor(60, 60, 60)),
                    )
                }))
                .map_err(|e| e.to_string())?;
        }
        if groups.len() > 1 || groups.first().is_some_and(|g| !g.is_empty()) {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(RGBColor(200, 200, 200))
                .draw()
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    })
}

/// Several series as lines with markers, with a legend.
pub fn lines(frame: &Frame, series: &[Series]) -> String {
    render(frame, |root| {
        let mut chart = xy_chart(root, frame)?;
        for (i, s) in series.iter().enumerate() {
            let c = color(i);
            chart
                .draw_series(LineSeries::new(s.points.iter().copied(), c.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(s.name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2))
                });
            chart
                .draw_series(
                    s.points
                        .iter()
                        .map(|&(x, y)| Circle::new((x, y), 3, c.filled())),
                )
                .map_err(|e| e.to_string())?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(RGBColor(200, 200, 200))
            .draw()
            .map_err(|e| e.to_string())?;
        Ok(())
    })
}

/// Grouped bars: for each group (x axis), one bar per metric name.
pub fn grouped_bars(
    frame: &Frame,
    groups: &[String],
    metrics: &[String],
    values: &[Vec<f64>],
) -> String {
    render(frame, |root| {
        let n = groups.len().max(1) as f64;
        let mut chart = ChartBuilder::on(root)
            .caption(&frame.title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..n, frame.y_range.0..frame.y_range.1)
            .map_err(|e| e.to_string())?;
        let labels = groups.to_vec();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(groups.len().max(1) * 2 + 1)
            .x_label_formatter(&move |x: &f64| {
                let i = (x - 0.5).round();
                if (x - 0.5 - i).abs() < 1e-6 && i >= 0.0 {
                    labels.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_desc(frame.y_label.as_str())
            .draw()
            .map_err(|e| e.to_string())?;
        let m = metrics.len().max(1) as f64;
        let width = 0.8 / m;
        for (mi, metric) in metrics.iter().enumerate() {
            let c = color(mi);
            let bars = values.iter().enumerate().filter_map(|(gi, row)| {
                let v = *row.get(mi)?;
                let x0 = gi as f64 + 0.1 + mi as f64 * width;
                Some(Rectangle::new(
                    [(x0, 0.0), (x0 + width * 0.9, v)],
                    c.filled(),
                ))
            });
            chart
                .draw_series(bars)
                .map_err(|e| e.to_string())?
                .label(metric.clone())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], c.filled()));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(RGBColor(200, 200, 200))
            .draw()
            .map_err(|e| e.to_string())?;
        Ok(())
    })
}

/// A heatmap of values in [0, 1] (shown as percentages): one row per `rows` entry, one column
/// per `columns` entry; `None` cells stay blank.
pub fn heatmap(
    title: &str,
    rows: &[String],
    columns: &[String],
    values: &[Vec<Option<f64>>],
) -> String {
    let cell_w = 64u32;
    let cell_h = 28u32;
    let label_w = 200u32;
    let frame = Frame {
        title: title.into(),
        x_label: String::new(),
        y_label: String::new(),
        x_range: (0.0, columns.len().max(1) as f64),
        y_range: (0.0, rows.len().max(1) as f64),
        width: label_w + cell_w * columns.len().max(1) as u32 + 20,
        height: 70 + cell_h * rows.len().max(1) as u32,
    };
    render(&frame, |root| {
        let (titled, body) = root.split_vertically(40);
        titled
            .titled(title, ("sans-serif", 18))
            .map_err(|e| e.to_string())?;
        let shade = |v: f64| {
            // White (0%) to red (100%).
            let v = v.clamp(0.0, 1.0);
            RGBColor(
                255,
                (255.0 * (1.0 - 0.8 * v)) as u8,
                (255.0 * (1.0 - 0.8 * v)) as u8,
            )
        };
        for (c, column) in columns.iter().enumerate() {
            let x = (label_w + c as u32 * cell_w) as i32;
            body.draw(&Text::new(
                column.clone(),
                (x + 4, 2),
                ("sans-serif", 13).into_font(),
            ))
            .map_err(|e| e.to_string())?;
        }
        for (r, row) in rows.iter().enumerate() {
            let y = (20 + r as u32 * cell_h) as i32;
            body.draw(&Text::new(
                row.clone(),
                (4, y + 7),
                ("sans-serif", 13).into_font(),
            ))
            .map_err(|e| e.to_string())?;
            for (c, value) in values.get(r).into_iter().flatten().enumerate() {
                let x = (label_w + c as u32 * cell_w) as i32;
                let fill = value.map(shade).unwrap_or(WHITE);
                body.draw(&Rectangle::new(
                    [(x, y), (x + cell_w as i32 - 2, y + cell_h as i32 - 2)],
                    fill.filled(),
                ))
                .map_err(|e| e.to_string())?;
                if let Some(v) = value {
                    body.draw(&Text::new(
                        format!("{:.1}", v * 100.0),
                        (x + 10, y + 7),
                        ("sans-serif", 12).into_font(),
                    ))
                    .map_err(|e| e.to_string())?;
                }
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_svg_with_escaped_labels() {
        let frame = Frame::new(
            "Fidelity <vs> diversity",
            "PP",
            "PR",
            (0.0, 1.0),
            (0.0, 1.0),
        );
        let svg = scatter(
            &frame,
            &[LabelledPoint {
                label: "<script>alert(1)</script>".into(),
                x: 0.5,
                y: 0.7,
                group: "model & co".into(),
            }],
        );
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.contains("&lt;script&gt;"), "{svg}");
        assert!(!svg.contains("<script>"));
        assert!(svg.contains("<circle"));

        let svg = lines(
            &frame,
            &[Series {
                name: "PP".into(),
                points: vec![(0.0, 0.1), (1.0, 0.9)],
            }],
        );
        assert!(svg.contains("<polyline") || svg.contains("<path"), "{svg}");
        let svg = grouped_bars(
            &frame,
            &["a".into(), "b".into()],
            &["P".into(), "R".into()],
            &[vec![0.2, 0.4], vec![0.6, 0.8]],
        );
        assert!(svg.matches("<rect").count() >= 4, "{svg}");
    }

    #[test]
    fn heatmaps_label_rows_and_columns() {
        let svg = heatmap(
            "E-ASR",
            &["model <a>".into(), "model b".into()],
            &["S1".into(), "S2".into()],
            &[vec![Some(0.25), None], vec![Some(1.0), Some(0.0)]],
        );
        assert!(svg.contains("model &lt;a&gt;") && svg.contains("S2"));
        assert!(svg.contains("25.0") && svg.contains("100.0"));
        assert_eq!(
            svg.matches("<rect").count(),
            4 + 1,
            "three filled cells, one blank, one background"
        );
    }

    #[test]
    fn ranges_are_padded() {
        let (lo, hi) = padded_range([0.2, 0.8], (0.0, 1.0));
        assert!(lo < 0.0 && hi > 1.0);
        let (lo, hi) = padded_range([5.0], (5.0, 5.0));
        assert!(hi > lo);
    }
}
