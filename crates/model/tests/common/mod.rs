//! The table runner shared by the bad-case tests.

use serval_model::parse_documents;

pub struct Case {
    doc: &'static str,
    path: &'static str,
    reason: &'static str,
}

pub const fn case(doc: &'static str, path: &'static str, reason: &'static str) -> Case {
    Case { doc, path, reason }
}

pub fn run(table: &[Case]) {
    let mut failures = Vec::new();
    for (i, c) in table.iter().enumerate() {
        match parse_documents("t.yaml", c.doc) {
            Ok(rs) => failures.push(format!(
                "row {i}: accepted, expected {}: {}\n{}\n{rs:?}",
                c.path, c.reason, c.doc
            )),
            Err(errs) => {
                let hit = errs
                    .iter()
                    .any(|e| e.path == c.path && e.reason.contains(c.reason));
                if !hit {
                    failures.push(format!(
                        "row {i}: expected `{}: …{}…`, got:\n{errs}\n--- doc:\n{}",
                        c.path, c.reason, c.doc
                    ));
                }
                for e in errs.iter() {
                    assert_eq!(e.document, 1);
                    assert_eq!(e.file, "t.yaml");
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n\n{}",
        failures.len(),
        table.len(),
        failures.join("\n\n")
    );
}

pub fn run_owned(rows: Vec<(String, &'static str, &'static str)>) {
    let leaked: Vec<Case> = rows
        .into_iter()
        .map(|(d, p, r)| case(Box::leak(d.into_boxed_str()), p, r))
        .collect();
    run(&leaked);
}
