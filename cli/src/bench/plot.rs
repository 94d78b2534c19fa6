//! Plot: fused loss + gradient throughput against N×C, per device and element type,
//! with each device's copy bandwidth as the ceiling, drawn into an SVG.

use xent::Context;

use super::Measurement;
use super::args::{Case, Element};
use super::cpu::cpu_model;
use super::report::{device_label, figures};

/// One point of the throughput plot.
pub(super) struct PlotPoint {
    /// `gpu`, `cpu`, or `gpu/256` in a workgroup-size sweep.
    device: String,
    /// The logits' element type.
    element: Element,
    /// N × C.
    elements: f64,
    /// Fused loss + gradient, end to end (`None` without host-to-host calls).
    gbps: Option<f64>,
    /// Fused loss + gradient, compute pass alone.
    kernel_gbps: Option<f64>,
    /// The backend's copy bandwidth at this size.
    copy_gbps: f64,
}

pub(super) fn plot_point(case: Case, measurement: &Measurement) -> PlotPoint {
    let figures = figures(case, measurement, None);
    PlotPoint {
        device: device_label(measurement),
        element: case.element,
        elements: (case.shape.rows * case.shape.classes) as f64,
        gbps: figures.gbps,
        kernel_gbps: figures.kernel_gbps,
        copy_gbps: measurement.copy.gbps,
    }
}

/// `xent loss + gradient throughput: <adapter> vs <CPU>`.
pub(super) fn plot_title(gpu: Option<&Context>, run_cpu: bool) -> String {
    let devices: Vec<String> = gpu
        .map(|context| context.adapter_info().name)
        .into_iter()
        .chain(run_cpu.then(|| format!("{} ({} threads)", cpu_model(), rayon::current_num_threads())))
        .collect();
    format!("xent fused loss + gradient throughput: {}", devices.join(" vs "))
}

/// One line of the plot: its legend label, points and style.
struct PlotLine {
    label: String,
    points: Vec<(f64, f64)>,
    color: plotters::style::RGBColor,
    dashed: bool,
}

/// Line colours of the GPU devices of a run (one per swept workgroup size), in order.
const GPU_COLORS: [plotters::style::RGBColor; 5] = [
    plotters::style::RGBColor(31, 119, 180),
    plotters::style::RGBColor(255, 127, 14),
    plotters::style::RGBColor(148, 103, 189),
    plotters::style::RGBColor(140, 86, 75),
    plotters::style::RGBColor(227, 119, 194),
];
const CPU_COLOR: plotters::style::RGBColor = plotters::style::RGBColor(214, 39, 40);
const KERNEL_COLOR: plotters::style::RGBColor = plotters::style::RGBColor(44, 160, 44);

/// The colour halfway between `first` and `second`.
fn blend(first: plotters::style::RGBColor, second: plotters::style::RGBColor) -> plotters::style::RGBColor {
    let mix = |a: u8, b: u8| ((u16::from(a) + u16::from(b)) / 2) as u8;
    plotters::style::RGBColor(mix(first.0, second.0), mix(first.1, second.1), mix(first.2, second.2))
}

/// `color` for f32, lightened for bf16 and darkened for f16, so a device's
/// element types share a hue.
fn element_shade(color: plotters::style::RGBColor, element: Element) -> plotters::style::RGBColor {
    let (target, amount) = match element {
        Element::F32 => return color,
        Element::Bf16 => (255.0, 0.5),
        Element::F16 => (0.0, 0.4),
    };
    let mix = |channel: u8| (f64::from(channel) + (target - f64::from(channel)) * amount).round() as u8;
    plotters::style::RGBColor(mix(color.0), mix(color.1), mix(color.2))
}

/// The plot's lines: per device and element type, end to end and compute pass
/// alone where timed; per device, copy bandwidth (dashed) as the ceiling, from
/// its f32 cases where it has them.
fn plot_lines(points: &[PlotPoint]) -> Vec<PlotLine> {
    let mut devices: Vec<&str> = Vec::new();
    for point in points {
        if !devices.contains(&point.device.as_str()) {
            devices.push(&point.device);
        }
    }
    let mut gpu_colors = GPU_COLORS.iter().cycle();
    let mut lines = Vec::new();
    for device in devices {
        let color = match device {
            "cpu" => CPU_COLOR,
            _ => gpu_colors.next().copied().unwrap_or(CPU_COLOR),
        };
        let series = |element: Option<Element>, value: &dyn Fn(&PlotPoint) -> Option<f64>| {
            let mut series: Vec<(f64, f64)> = points
                .iter()
                .filter(|point| point.device == device && element.is_none_or(|element| point.element == element))
                .filter_map(|point| Some((point.elements, value(point)?)))
                .collect();
            series.sort_by(|a, b| a.0.total_cmp(&b.0));
            series
        };
        let mut candidates = Vec::new();
        for element in [Element::F32, Element::Bf16, Element::F16] {
            let name = element.name();
            candidates.push((
                format!("{device} {name} end to end (host memory to host memory)"),
                series(Some(element), &|p| p.gbps),
                element_shade(color, element),
                false,
            ));
            candidates.push((
                format!("{device} {name} compute pass alone (timestamps)"),
                series(Some(element), &|p| p.kernel_gbps),
                // Greenish, and distinct per device in a workgroup-size sweep.
                element_shade(blend(KERNEL_COLOR, color), element),
                false,
            ));
        }
        let copy_element = [Element::F32, Element::Bf16, Element::F16]
            .into_iter()
            .find(|&element| points.iter().any(|p| p.device == device && p.element == element));
        candidates.push((
            format!("{device} copy bandwidth (read + write)"),
            series(copy_element, &|p| Some(p.copy_gbps)),
            color,
            true,
        ));
        lines.extend(
            candidates
                .into_iter()
                .filter(|(_, points, _, _)| !points.is_empty())
                .map(|(label, points, color, dashed)| PlotLine {
                    label,
                    points,
                    color,
                    dashed,
                }),
        );
    }
    lines
}

/// The range `[low, high]` of `values` widened by the factors `below` and `above`,
/// for a log axis.
fn log_range(values: impl Iterator<Item = f64>, below: f64, above: f64) -> std::ops::Range<f64> {
    let (low, high) = values
        .filter(|value| value.is_finite() && *value > 0.0)
        .fold((f64::INFINITY, 0.0f64), |(low, high), value| {
            (low.min(value), high.max(value))
        });
    if high <= 0.0 {
        return 1.0..10.0;
    }
    // At least the decade around the lowest value, so that a single point (one
    // shape) still gets labelled ticks at two powers of ten.
    let decade = 10f64.powf(low.log10().floor());
    (low / below).min(decade)..(high * above).max(decade * 10.0)
}

/// A tick label with as many decimals as its size needs (0.05, 0.5, 5, 50).
fn axis_number(value: f64) -> String {
    let decimals = (-value.log10().floor()).clamp(0.0, 6.0) as usize;
    format!("{value:.decimals$}")
}

/// Draws GB/s (log) against N×C elements (log) into an SVG file at `path`.
/// The SVG of the throughput plot.
pub(super) fn draw_plot(title: &str, points: &[PlotPoint]) -> Result<String, String> {
    use plotters::prelude::*;
    let lines = plot_lines(points);
    let x_range = log_range(
        lines.iter().flat_map(|line| line.points.iter().map(|point| point.0)),
        1.5,
        1.5,
    );
    let y_range = log_range(
        lines.iter().flat_map(|line| line.points.iter().map(|point| point.1)),
        2.0,
        // A decade of headroom keeps the legend (upper left) clear of the lines.
        12.0,
    );
    let to_message = |error: DrawingAreaErrorKind<std::io::Error>| format!("drawing the plot: {error}");
    let mut svg = String::new();
    let root = SVGBackend::with_string(&mut svg, (1000, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(to_message)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(x_range.log_scale(), y_range.log_scale())
        .map_err(to_message)?;
    chart
        .configure_mesh()
        .x_desc("N × C (logits, elements; log scale)")
        .y_desc("GB/s (2 × N × C × bytes per logit ÷ time; log scale)")
        .x_label_formatter(&|value| format!("{value:.1e}"))
        .y_label_formatter(&|value| axis_number(*value))
        .draw()
        .map_err(to_message)?;
    for line in lines {
        let style = ShapeStyle::from(line.color).stroke_width(2);
        let legend_style = style;
        let annotation = if line.dashed {
            chart
                .draw_series(DashedLineSeries::new(line.points, 8, 5, style))
                .map_err(to_message)?
        } else {
            chart
                .draw_series(LineSeries::new(line.points, style).point_size(4))
                .map_err(to_message)?
        };
        annotation
            .label(line.label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], legend_style));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(to_message)?;
    root.present().map_err(to_message)?;
    drop(chart);
    drop(root);
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_axis_spans_at_least_a_decade_of_powers_of_ten() {
        for value in [3.2e4, 1e6, 0.07] {
            let range = log_range(std::iter::once(value), 1.5, 1.5);
            let decade = 10f64.powf(value.log10().floor());
            assert!(
                range.start <= decade && range.end >= decade * 10.0,
                "{value}: {range:?}"
            );
            assert!(
                range.start <= value / 1.5 && range.end >= value * 1.5,
                "{value}: {range:?}"
            );
        }
        let range = log_range([1e3, 1e8].into_iter(), 2.0, 2.0);
        assert_eq!(range, 500.0..2e8);
    }
}
