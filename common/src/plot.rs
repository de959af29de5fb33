//! Loss-vs-epoch figures as SVG, drawn with plotters: small multiples (one panel per
//! architecture, or one for a single job), a colour per fold with validation solid and training
//! dashed, the best epoch marked, one y scale for every panel, and the legend in its own column
//! beside the data, never over it. `cv.svg`, each job's `loss.svg`, the dashboard and
//! `report.html` all draw through [`figure_svg`].

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::records::EpochReport;

/// One fold's curves in a panel.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Curve {
    /// What the legend calls it ("fold 0").
    pub label: String,
    /// `(epoch, KL)` on the training batches (drawn dashed).
    pub train: Vec<(f64, f64)>,
    /// `(epoch, KL)` on the validation fold (drawn solid).
    pub valid: Vec<(f64, f64)>,
    /// The epoch whose weights were kept (marked with a dot on the validation curve).
    pub best: Option<f64>,
}

impl Curve {
    /// A job's curves from its epochs (numbered from 1 on the figure), the best epoch being the
    /// last one flagged best.
    pub fn of_history(label: &str, history: &[EpochReport]) -> Curve {
        let x = |r: &EpochReport| r.epoch as f64 + 1.0;
        Curve {
            label: label.into(),
            train: history.iter().map(|r| (x(r), r.train_kl)).collect(),
            valid: history
                .iter()
                .filter_map(|r| r.valid_kl.map(|v| (x(r), v)))
                .collect(),
            best: history.iter().rfind(|r| r.best).map(x),
        }
    }
}

/// One panel: an architecture's folds, or one job.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Panel {
    pub title: String,
    pub curves: Vec<Curve>,
    /// Stage 1's epochs when the jobs train a second stage: a dashed line marks where it
    /// starts.
    pub stage1_epochs: Option<usize>,
}

/// The run's figure (`cv.svg`): a panel per architecture, in `archs` order, with a curve per
/// fold of the `(architecture, fold, epochs)` given; `stage1[i]` is `archs[i]`'s stage-1
/// epochs when its jobs train a second stage.
pub fn cv_svg(
    archs: &[String],
    jobs: &[(String, usize, Vec<EpochReport>)],
    stage1: &[Option<usize>],
) -> String {
    let panels: Vec<Panel> = archs
        .iter()
        .enumerate()
        .map(|(i, arch)| {
            let mut folds: Vec<_> = jobs.iter().filter(|j| &j.0 == arch).collect();
            folds.sort_by_key(|j| j.1);
            Panel {
                title: arch.clone(),
                curves: folds
                    .iter()
                    .map(|(_, fold, h)| Curve::of_history(&format!("fold {fold}"), h))
                    .collect(),
                stage1_epochs: stage1.get(i).copied().flatten(),
            }
        })
        .collect();
    figure_svg("KL divergence per epoch, every fold", &panels)
}

/// A job's figure (`loss.svg`); `stage1_epochs` as for [`Panel`].
pub fn job_svg(
    title: &str,
    fold: usize,
    history: &[EpochReport],
    stage1_epochs: Option<usize>,
) -> String {
    let panel = Panel {
        title: String::new(),
        curves: vec![Curve::of_history(&format!("fold {fold}"), history)],
        stage1_epochs,
    };
    figure_svg(title, &[panel])
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// Panel size, and the legend column inside it.
const PANEL: (u32, u32) = (560, 380);
const LEGEND: u32 = 130;
const COLUMNS: usize = 2;
const TITLE: u32 = 40;

/// Renders `panels` as one SVG document titled `title`: panels in rows of two, sharing the axes'
/// ranges so that they compare at a glance.
pub fn figure_svg(title: &str, panels: &[Panel]) -> String {
    let columns = panels.len().clamp(1, COLUMNS);
    let rows = panels.len().div_ceil(COLUMNS).max(1);
    let size = (PANEL.0 * columns as u32, TITLE + PANEL.1 * rows as u32);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        let _ = draw(&root, title, panels, (rows, columns));
        let _ = root.present();
    }
    svg
}

fn finite(points: &[(f64, f64)]) -> impl Iterator<Item = (f64, f64)> + Clone + '_ {
    points
        .iter()
        .copied()
        .filter(|p| p.0.is_finite() && p.1.is_finite())
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    panels: &[Panel],
    (rows, columns): (usize, usize),
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let (head, body) = root.split_vertically(TITLE);
    head.draw(&Text::new(
        title.to_string(),
        (12, 10),
        ("sans-serif", 20).into_font(),
    ))?;
    let (mut x_max, mut y_min, mut y_max) = (1.0f64, f64::INFINITY, f64::NEG_INFINITY);
    for c in panels.iter().flat_map(|p| &p.curves) {
        for (x, y) in finite(&c.train).chain(finite(&c.valid)) {
            x_max = x_max.max(x);
            y_min = y_min.min(y);
            y_max = y_max.max(y);
        }
    }
    // The data's own range (KL curves sit far from 0), with a margin.
    let (y_min, y_max) = match y_min <= y_max {
        true => {
            let pad = ((y_max - y_min) * 0.08).max(1e-3);
            ((y_min - pad).max(0.0), y_max + pad)
        }
        false => (0.0, 1.0),
    };
    let cells = body.split_evenly((rows, columns));
    for (panel, cell) in panels.iter().zip(&cells) {
        draw_panel(cell, panel, x_max, (y_min, y_max))?;
    }
    if panels.is_empty() {
        cells[0].draw(&Text::new(
            "no epoch yet".to_string(),
            (20, 20),
            ("sans-serif", 16).into_font(),
        ))?;
    }
    Ok(())
}

fn draw_panel<DB: DrawingBackend>(
    cell: &DrawingArea<DB, Shift>,
    panel: &Panel,
    x_max: f64,
    (y_min, y_max): (f64, f64),
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let (w, _) = cell.dim_in_pixel();
    let (data, legend) = cell.split_horizontally(w.saturating_sub(LEGEND));
    let mut chart = ChartBuilder::on(&data)
        .caption(&panel.title, ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(34)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..x_max, y_min..y_max)?;
    chart
        .configure_mesh()
        .x_labels((x_max as usize + 1).min(11))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.2}"))
        .x_desc("epoch")
        .y_desc("KL divergence")
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    if let Some(e) = panel.stage1_epochs {
        // Epochs are numbered from 1: stage 2 starts after x = e.
        let x = e as f64 + 0.5;
        let grey = RGBColor(120, 120, 120).stroke_width(1);
        chart.draw_series(DashedLineSeries::new([(x, y_min), (x, y_max)], 4, 4, grey))?;
        chart.draw_series(std::iter::once(Text::new(
            "stage 2",
            (x, y_max),
            ("sans-serif", 12).into_font(),
        )))?;
    }
    for (i, c) in panel.curves.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let style = color.stroke_width(2);
        chart.draw_series(LineSeries::new(finite(&c.valid), style))?;
        chart.draw_series(DashedLineSeries::new(finite(&c.train), 6, 4, style))?;
        if let Some(best) = c.best
            && let Some(p) = finite(&c.valid).find(|p| p.0 == best)
        {
            chart.draw_series(std::iter::once(Circle::new(p, 5, color.filled())))?;
        }
    }
    // The legend: one row per fold, then what the line styles mean.
    let row = |i: usize| 44 + 20 * i as i32;
    let font = ("sans-serif", 13).into_font();
    for (i, c) in panel.curves.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        legend.draw(&PathElement::new(
            vec![(4, row(i)), (26, row(i))],
            color.stroke_width(3),
        ))?;
        legend.draw(&Text::new(c.label.clone(), (32, row(i) - 7), font.clone()))?;
    }
    let key = row(panel.curves.len()) + 10;
    let black = BLACK.stroke_width(2);
    legend.draw(&PathElement::new(vec![(4, key), (26, key)], black))?;
    legend.draw(&Text::new("validation", (32, key - 7), font.clone()))?;
    legend.draw(&PathElement::new(
        vec![(4, key + 20), (10, key + 20)],
        black,
    ))?;
    legend.draw(&PathElement::new(
        vec![(16, key + 20), (22, key + 20)],
        black,
    ))?;
    legend.draw(&Text::new("training", (32, key + 13), font.clone()))?;
    legend.draw(&Circle::new((15, key + 40), 5, BLACK.filled()))?;
    legend.draw(&Text::new("best epoch", (32, key + 33), font))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(label: &str, best: f64) -> Curve {
        Curve {
            label: label.into(),
            train: vec![(1.0, 1.3), (2.0, 0.9), (3.0, f64::NAN)],
            valid: vec![(1.0, 1.2), (2.0, 1.0), (3.0, 1.1)],
            best: Some(best),
        }
    }

    /// The x of every `<text>` element whose content is `t`.
    fn text_x(svg: &str, t: &str) -> Vec<f64> {
        svg.split("<text")
            .skip(1)
            .filter(|e| {
                e.split('>')
                    .nth(1)
                    .is_some_and(|s| s.trim_start().starts_with(t))
            })
            .filter_map(|e| {
                let x = e.split("x=\"").nth(1)?.split('"').next()?;
                x.parse().ok()
            })
            .collect()
    }

    #[test]
    fn small_multiples_have_a_panel_per_architecture_and_the_legend_beside_the_data() {
        let panels = vec![
            Panel {
                title: "mobilenetv3-large".into(),
                curves: vec![curve("fold 0", 2.0), curve("fold 1", 2.0)],
                stage1_epochs: None,
            },
            Panel {
                title: "efficientnetv2-b2".into(),
                curves: vec![curve("fold 0", 3.0)],
                stage1_epochs: None,
            },
        ];
        let svg = figure_svg("KL divergence per epoch", &panels);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        for t in [
            "KL divergence per epoch",
            "mobilenetv3-large",
            "efficientnetv2-b2",
            "validation",
            "training",
            "best epoch",
            "epoch",
        ] {
            assert!(!text_x(&svg, t).is_empty(), "{t} missing");
        }
        // Legend entries sit right of each panel's data area (the last LEGEND pixels of it).
        let legend_x = text_x(&svg, "fold 1");
        assert_eq!(legend_x.len(), 1);
        assert!(legend_x[0] > (PANEL.0 - LEGEND) as f64, "{legend_x:?}");
        let second = text_x(&svg, "fold 0");
        assert_eq!(second.len(), 2, "a legend per panel");
        assert!(second.iter().any(|x| *x > (2 * PANEL.0 - LEGEND) as f64));
        // One marker per curve's best epoch, plus the legend's key.
        assert_eq!(svg.matches("<circle").count(), 3 + 2);
        // Dashed training lines are drawn as segments, validation as one polyline per curve.
        assert!(svg.matches("<polyline").count() >= 3);
    }

    #[test]
    fn a_second_stage_is_marked_where_it_starts() {
        let one = job_svg("job", 0, &[], None);
        assert!(text_x(&one, "stage 2").is_empty());
        let h: Vec<EpochReport> = (0..4)
            .map(|epoch| EpochReport {
                epoch,
                lr: 1e-3,
                train_kl: 1.0 - epoch as f64 * 0.1,
                valid_kl: Some(1.1 - epoch as f64 * 0.1),
                seconds: 1.0,
                samples_per_second: 1.0,
                best: true,
            })
            .collect();
        let two = job_svg("job", 0, &h, Some(2));
        let x = text_x(&two, "stage 2");
        assert_eq!(x.len(), 1);
        // Between epoch 2 and epoch 3 on the axis: right of "2"'s tick label, left of "3"'s.
        let (t2, t3) = (text_x(&two, "2")[0], text_x(&two, "3")[0]);
        assert!(t2 < x[0] && x[0] < t3, "{t2} < {} < {t3}", x[0]);
        let runs = cv_svg(&["a".into()], &[("a".into(), 0, h)], &[Some(2)]);
        assert_eq!(text_x(&runs, "stage 2").len(), 1);
    }

    #[test]
    fn text_is_escaped_and_an_empty_figure_says_so() {
        let svg = figure_svg("<script>alert(1)</script>", &[]);
        assert!(!svg.contains("<script>"));
        assert!(svg.contains("&lt;script&gt;"));
        assert!(svg.contains("no epoch yet"));
    }
}
