//! Loss-vs-epoch figures as SVG (the original project's figure), drawn with plotters.

use plotters::prelude::*;

/// One line of a figure.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub label: String,
    /// `(epoch, loss)` points.
    pub points: Vec<(f64, f64)>,
    /// Dashed lines for training curves, solid for validation.
    pub dashed: bool,
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

/// Renders `series` as an SVG document titled `title` (KL divergence against epoch).
pub fn loss_svg(title: &str, series: &[Series]) -> String {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 540)).into_drawing_area();
        let _ = draw(&root, title, series);
        let _ = root.present();
    }
    svg
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    series: &[Series],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let pts = series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|p| p.1.is_finite());
    let (mut x_max, mut y_max) = (1.0f64, 0.0f64);
    for &(x, y) in pts {
        x_max = x_max.max(x);
        y_max = y_max.max(y);
    }
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..x_max.max(1.0), 0.0..(y_max * 1.05).max(1e-3))?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc("KL divergence")
        .draw()?;
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[(i / 2) % COLORS.len()];
        let style = ShapeStyle {
            color: color.to_rgba(),
            filled: false,
            stroke_width: 2,
        };
        let points: Vec<(f64, f64)> = s
            .points
            .iter()
            .copied()
            .filter(|p| p.1.is_finite())
            .collect();
        let drawn = if s.dashed {
            chart.draw_series(DashedLineSeries::new(points, 6, 4, style))?
        } else {
            chart.draw_series(LineSeries::new(points, style))?
        };
        drawn
            .label(s.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_series_with_its_label() {
        let s = vec![
            Series {
                label: "fold 0 train".into(),
                points: vec![(0.0, 1.3), (1.0, 0.9), (2.0, f64::NAN)],
                dashed: true,
            },
            Series {
                label: "fold 0 valid".into(),
                points: vec![(0.0, 1.2), (1.0, 1.0)],
                dashed: false,
            },
        ];
        let svg = loss_svg("mobilenetv3-large", &s);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        for t in [
            "mobilenetv3-large",
            "fold 0 train",
            "fold 0 valid",
            "epoch",
            "KL divergence",
        ] {
            assert!(svg.contains(t), "{t} missing");
        }
        assert!(svg.matches("<polyline").count() >= 2 || svg.matches("<path").count() >= 2);
    }
}
