//! Horizontal bar charts as plain SVG: one bar per scenario (the median),
//! a whisker from the smallest to the largest repetition.

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// `items`: (label, median, min, max).
pub fn bars(title: &str, unit: &str, items: &[(String, f64, f64, f64)]) -> String {
    let (label_w, bar_w, row_h, top) = (250.0, 420.0, 26.0, 40.0);
    let width = label_w + bar_w + 110.0;
    let height = top + row_h * items.len() as f64 + 20.0;
    let max = items
        .iter()
        .map(|i| i.3.max(i.1))
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let x = |v: f64| label_w + (v / max).clamp(0.0, 1.0) * bar_w;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"22\" font-size=\"15\" font-weight=\"bold\">{} ({})</text>\n",
        esc(title),
        esc(unit)
    );
    for (i, (label, med, lo, hi)) in items.iter().enumerate() {
        let y = top + row_h * i as f64;
        let colour = if label.starts_with("Muslin") {
            "#2b7bb9"
        } else {
            "#9aa5b1"
        };
        s.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n",
            label_w - 8.0,
            y + 15.0,
            esc(label)
        ));
        if med.is_finite() {
            s.push_str(&format!("<rect x=\"{label_w}\" y=\"{}\" width=\"{:.1}\" height=\"{}\" fill=\"{colour}\"/>\n", y + 3.0, x(*med) - label_w, row_h - 8.0));
            if lo.is_finite() && hi.is_finite() && hi > lo {
                s.push_str(&format!(
                    "<line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{m}\" y2=\"{m}\" stroke=\"black\"/>\n",
                    x(*lo),
                    x(*hi),
                    m = y + row_h / 2.0 - 1.0
                ));
            }
            s.push_str(&format!(
                "<text x=\"{:.1}\" y=\"{}\">{}</text>\n",
                x(med.max(*hi)) + 6.0,
                y + 15.0,
                fmt(*med)
            ));
        }
    }
    s.push_str("</svg>\n");
    s
}

pub fn fmt(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_has_a_bar_per_item_and_escapes() {
        let svg = bars(
            "RR <p50>",
            "µs",
            &[
                ("Muslin routed".into(), 50.0, 45.0, 60.0),
                ("hand-built".into(), 40.0, 40.0, 40.0),
            ],
        );
        assert!(svg.starts_with("<svg"));
        assert_eq!(svg.matches("<rect x=").count(), 2);
        assert!(svg.contains("RR &lt;p50&gt;"));
        assert_eq!(fmt(123.4), "123");
        assert_eq!(fmt(1.234), "1.23");
    }
}
