//! Golden files: a planner's output as text, checked in under
//! `tests/golden/NAME.txt`, so that a review sees every change to what
//! Muslin would do to a host.

use std::path::PathBuf;

const UPDATE: &str = "MUSLIN_UPDATE_GOLDEN";

fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.txt"))
}

/// Compares `actual` with the golden file `name`, or rewrites the file
/// when `MUSLIN_UPDATE_GOLDEN=1`.
#[track_caller]
pub fn check(name: &str, actual: &str) {
    let path = path(name);
    // Files end in a newline whatever the renderer did, so editors that
    // add one do not make the test fail.
    let mut actual = actual.to_string();
    if !actual.ends_with('\n') {
        actual.push('\n');
    }
    if std::env::var(UPDATE).as_deref() == Ok("1") {
        if std::fs::read_to_string(&path).ok().as_deref() != Some(actual.as_str()) {
            std::fs::write(&path, &actual)
                .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        }
        return;
    }
    let how = format!(
        "if the new output is right, run `{UPDATE}=1 cargo test -p muslin-plan` and review the file's git diff"
    );
    let expected = match std::fs::read_to_string(&path) {
        Ok(s) => s,
        Err(e) => panic!("golden file {} unreadable: {e}\n{how}", path.display()),
    };
    if expected != actual {
        panic!(
            "output differs from golden file {} (-expected +actual):\n{}\n{how}",
            path.display(),
            line_diff(&expected, &actual)
        );
    }
}

/// The lines that differ, with two lines of context, from a longest common
/// subsequence of lines (the files are small).
pub fn line_diff(expected: &str, actual: &str) -> String {
    let a: Vec<&str> = expected.lines().collect();
    let b: Vec<&str> = actual.lines().collect();
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut ops: Vec<(char, &str)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            ops.push((' ', a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push(('-', a[i]));
            i += 1;
        } else {
            ops.push(('+', b[j]));
            j += 1;
        }
    }
    let near_change = |k: usize| {
        let lo = k.saturating_sub(2);
        let hi = (k + 3).min(ops.len());
        ops[lo..hi].iter().any(|(c, _)| *c != ' ')
    };
    let mut out = String::new();
    let mut elided = false;
    for (k, (c, line)) in ops.iter().enumerate() {
        if near_change(k) {
            out.push_str(&format!("{c} {line}\n"));
            elided = false;
        } else if !elided {
            out.push_str("  ...\n");
            elided = true;
        }
    }
    out
}

#[test]
fn diff_shows_changed_lines_with_context() {
    let d = line_diff("a\nb\nc\nd\ne\nf\ng\n", "a\nb\nc\nD\ne\nf\ng\n");
    assert_eq!(d, "  ...\n  b\n  c\n- d\n+ D\n  e\n  f\n  ...\n");
    assert_eq!(line_diff("x\n", "x\ny\n"), "  x\n+ y\n");
}
