//! The SVG timeline around one switch of a phase: requests per 10 ms by the version that
//! answered, failures marked, the switch's start and end drawn.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::report::Phase;

/// Writes `<dir>/timeline-<phase>.svg`; `None` when the phase has no timeline.
pub fn write_svg(dir: &Path, phase: &Phase) -> Result<Option<PathBuf>, String> {
    let Some(t) = &phase.timeline else {
        return Ok(None);
    };
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let slug: String = phase
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect::<String>()
        .split('-')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    let path = dir.join(format!("timeline-{slug}.svg"));
    let (first, last) = (
        t.bins.first().map_or(0, |b| b.at_ms),
        t.bins.last().map_or(0, |b| b.at_ms + 10),
    );
    let top = t
        .bins
        .iter()
        .map(|b| b.old + b.new + b.failed)
        .max()
        .unwrap_or(1)
        .max(1) as i64
        * 8
        / 5
        + 2;
    let end = t.switch_took.as_millis() as i64;
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(&path, (900, 420)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "{}: requests per 10 ms around the switch to {} (switch ran {} ms)",
                    phase.name, t.deployment, end
                ),
                ("sans-serif", 16),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(44)
            .build_cartesian_2d(first..last, 0i64..top)?;
        chart
            .configure_mesh()
            .x_desc("ms from the switch start (request send time)")
            .y_desc("requests")
            .disable_mesh()
            .draw()?;
        let series = |pick: fn(&crate::stats::Bin) -> usize| {
            t.bins
                .iter()
                .flat_map(move |b| [(b.at_ms, pick(b) as i64), (b.at_ms + 10, pick(b) as i64)])
                .collect::<Vec<_>>()
        };
        chart
            .draw_series(LineSeries::new(series(|b| b.old), BLUE.stroke_width(2)))?
            .label("answered by the old version")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE.stroke_width(2)));
        chart
            .draw_series(LineSeries::new(series(|b| b.new), GREEN.stroke_width(2)))?
            .label("answered by the new version")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], GREEN.stroke_width(2)));
        chart
            .draw_series(
                t.bins
                    .iter()
                    .filter(|b| b.failed > 0)
                    .map(|b| Cross::new((b.at_ms + 5, b.failed as i64), 6, RED.stroke_width(2))),
            )?
            .label("failed (count in that 10 ms)")
            .legend(|(x, y)| Cross::new((x + 8, y), 5, RED.stroke_width(2)));
        for (at, label) in [(0, "switch starts"), (end, "switch returns")] {
            chart
                .draw_series(LineSeries::new(
                    vec![(at, 0), (at, top)],
                    BLACK.mix(0.5).stroke_width(1),
                ))?
                .label(label)
                .legend(|(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], BLACK.mix(0.5).stroke_width(1))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.3))
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Some(path))
}
