//! Reading resource files given with `-f`: files, directories and stdin.

use std::io::Read;
use std::path::Path;

use anyhow::Context;
use serval_model::{Resource, ValidationErrors};

/// A source at least this large is parsed on several threads.
const PARALLEL_MIN_BYTES: usize = 1 << 20;
/// At most this many parsing threads.
const MAX_THREADS: usize = 8;

/// Read and validate every document of every input. All inputs are read and checked before
/// anything is returned: the error lists every bad document of every file.
pub fn read_resources(inputs: &[String]) -> anyhow::Result<Vec<Resource>> {
    let mut sources = Vec::new();
    for input in inputs {
        if input == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading stdin")?;
            sources.push(("<stdin>".to_string(), text));
            continue;
        }
        let path = Path::new(input);
        let meta = std::fs::metadata(path).with_context(|| format!("reading {input}"))?;
        if meta.is_dir() {
            let mut files: Vec<_> = std::fs::read_dir(path)
                .with_context(|| format!("reading directory {input}"))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && matches!(
                            p.extension().and_then(|e| e.to_str()),
                            Some("yaml" | "yml" | "json")
                        )
                })
                .collect();
            files.sort();
            for f in files {
                let text = std::fs::read_to_string(&f)
                    .with_context(|| format!("reading {}", f.display()))?;
                sources.push((f.display().to_string(), text));
            }
        } else {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {input}"))?;
            sources.push((input.clone(), text));
        }
    }
    let mut resources = Vec::new();
    let mut errors = Vec::new();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_THREADS));
    for (name, text) in &sources {
        match parse_source(name, text, threads, PARALLEL_MIN_BYTES) {
            // The first source's vector is kept as it is: 50,000 resources are ~22 MB to move.
            Ok(rs) if resources.is_empty() => resources = rs,
            Ok(rs) => resources.extend(rs),
            Err(ValidationErrors(es)) => errors.extend(es),
        }
    }
    if !errors.is_empty() {
        return Err(ValidationErrors(errors).into());
    }
    Ok(resources)
}

/// Parse one source, on up to `threads` threads when it is at least `min_bytes` long: the text
/// is cut at document markers into pieces parsed side by side, and the results joined in
/// order, exactly as one pass would give them (the same resources in the same order; errors
/// name the same document numbers). YAML forbids a line starting with `---` inside any
/// document's content, so a line that is exactly `---` always starts a document. Texts with
/// other stream syntax at the start of a line (`...` document ends, `%` directives, content
/// after `---` on the marker line) are parsed in one pass.
///
/// One difference: one pass stops at the first YAML syntax error (the stream cannot be
/// resynchronised), while pieces after it are still parsed and their errors reported too.
fn parse_source(
    name: &str,
    text: &str,
    threads: usize,
    min_bytes: usize,
) -> Result<Vec<Resource>, ValidationErrors> {
    let pieces = match split_documents(text, threads) {
        Some(p) if text.len() >= min_bytes && p.len() > 1 => p,
        _ => return serval_model::parse_documents(name, text),
    };
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = pieces
            .iter()
            .map(|&(piece, first_doc)| {
                scope.spawn(move || (serval_model::parse_documents(name, piece), first_doc))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    // Joined into the first piece's vector, grown once.
    let total: usize = results
        .iter()
        .map(|(r, _)| r.as_ref().map_or(0, Vec::len))
        .sum();
    let mut resources: Vec<Resource> = Vec::new();
    let mut errors = Vec::new();
    for (result, first_doc) in results {
        match result {
            Ok(rs) if resources.is_empty() => {
                resources = rs;
                resources.reserve(total - resources.len());
            }
            Ok(rs) => resources.extend(rs),
            Err(ValidationErrors(es)) => errors.extend(es.into_iter().map(|mut e| {
                // Numbered within the piece; 0 means "not tied to a document".
                if e.document > 0 {
                    e.document += first_doc;
                }
                e
            })),
        }
    }
    if errors.is_empty() {
        Ok(resources)
    } else {
        Err(ValidationErrors(errors))
    }
}

/// Cut `text` into up to `pieces` pieces at lines that are exactly `---`, each with the number
/// of documents before it. `None` when the text uses stream syntax this does not count
/// (see [`parse_source`]).
fn split_documents(text: &str, pieces: usize) -> Option<Vec<(&str, usize)>> {
    // Offsets of every marker line; whether content precedes the first marker (an implicit
    // first document).
    let mut markers = Vec::new();
    for start in special_lines(text) {
        let line = text[start..].split('\n').next().unwrap_or("");
        let bare = line.trim_end_matches('\r');
        if bare.starts_with("---") {
            if bare.trim_end() != "---" {
                return None;
            }
            markers.push(start);
        } else if bare.starts_with("...") || bare.starts_with('%') {
            return None;
        }
    }
    let implicit_first = text[..markers.first().copied().unwrap_or(text.len())]
        .lines()
        .map(str::trim)
        .any(|t| !t.is_empty() && !t.starts_with('#'));
    let before_first = usize::from(implicit_first);
    let mut out = Vec::new();
    let (mut start, mut docs_before) = (0, 0);
    let mut next_marker = 0;
    for k in 1..pieces.max(1) {
        let target = text.len() * k / pieces;
        // The first marker at or after the target that starts a new piece.
        while next_marker < markers.len()
            && (markers[next_marker] < target || markers[next_marker] <= start)
        {
            next_marker += 1;
        }
        let Some(&cut) = markers.get(next_marker) else {
            break;
        };
        out.push((&text[start..cut], docs_before));
        // Documents in the piece just closed: its markers, plus the implicit first document.
        docs_before = before_first + next_marker;
        start = cut;
    }
    out.push((&text[start..], docs_before));
    Some(out)
}

/// Offsets of the lines that start with `-`, `.` or `%`, the only lines that can hold stream
/// syntax, in order. Blocks of text are first tested for one without branches (which the
/// compiler vectorises): a line-by-line walk of 50,000 documents took ~11 ms, this ~2.5 ms.
fn special_lines(text: &str) -> Vec<usize> {
    const BLOCK: usize = 64;
    let b = text.as_bytes();
    let special = |c: u8| (c == b'-') | (c == b'.') | (c == b'%');
    let mut out = Vec::new();
    if b.first().is_some_and(|&c| special(c)) {
        out.push(0);
    }
    let mut start = 0;
    while start + 1 < b.len() {
        // Pairs (b[i], b[i + 1]) for i in start..end - 1; the next block starts at end - 1.
        let end = (start + BLOCK + 1).min(b.len());
        let block = &b[start..end];
        let hit = block
            .iter()
            .zip(&block[1..])
            .fold(false, |h, (&a, &c)| h | ((a == b'\n') & special(c)));
        if hit {
            out.extend(
                (start..end - 1)
                    .filter(|&i| b[i] == b'\n' && special(b[i + 1]))
                    .map(|i| i + 1),
            );
        }
        start = end - 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(i: usize) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: s{i}\n  namespace: default\nspec:\n  \
             selector:\n    app: a\n  ports:\n    - port: 80\n"
        )
    }

    /// The pieces, parsed and joined, give exactly what one pass gives: resources, and error
    /// document numbers (one bad document near the end, one in the middle).
    #[test]
    fn pieces_parse_as_one_pass() {
        let mut text = String::from("# leading comment\n\n");
        for i in 0..400 {
            text.push_str("---\n");
            if i == 150 || i == 397 {
                text.push_str("apiVersion: v1\nkind: Service\nmetadata:\n  name: bad\nspec:\n  ports:\n    - port: 99999\n");
            } else if i == 200 {
                // An empty document still counts.
                continue;
            } else {
                text.push_str(&service(i));
            }
        }
        let one = serval_model::parse_documents("f.yaml", &text);
        let pieces = split_documents(&text, 4).expect("plain markers");
        assert_eq!(pieces.len(), 4);
        let many = parse_source("f.yaml", &text, 4, 0);
        let (Err(one), Err(many)) = (one, many) else {
            panic!("both must fail");
        };
        assert_eq!(one, many);
        assert_eq!(one.len(), 2, "{one}");
        assert_eq!(one.0[0].document, 151);

        // Without bad documents: the same resources in the same order.
        let good: String = (0..300).map(|i| format!("---\n{}", service(i))).collect();
        let one = serval_model::parse_documents("g.yaml", &good).expect("valid");
        let many = parse_source("g.yaml", &good, 3, 0).expect("valid");
        assert_eq!(one, many);
        assert_eq!(many.len(), 300);
    }

    #[test]
    fn an_implicit_first_document_is_counted() {
        let text: String = std::iter::once(service(0))
            .chain((1..50).map(|i| format!("---\n{}", service(i))))
            .chain(std::iter::once("---\nkind: Nope\n".to_string()))
            .collect();
        let one = serval_model::parse_documents("f.yaml", &text).expect_err("bad kind");
        let many = parse_source("f.yaml", &text, 2, 0).expect_err("bad kind");
        assert_eq!(one, many);
        assert_eq!(many.0[0].document, 51);
    }

    /// The block scan finds exactly the lines a line-by-line walk finds, across block edges.
    /// The offsets of the lines starting with `-`, `.` or `%`, found by walking every line.
    fn line_walk(text: &str) -> Vec<usize> {
        let mut offset = 0;
        text.split_inclusive('\n')
            .filter_map(|l| {
                let o = offset;
                offset += l.len();
                l.starts_with(['-', '.', '%']).then_some(o)
            })
            .collect()
    }

    #[test]
    fn special_lines_match_a_line_walk() {
        let mut text = String::new();
        for i in 0..300 {
            let line = match i % 7 {
                0 => "---".to_string(),
                1 => format!("{}- item", " ".repeat(i % 3)),
                2 => "...".to_string(),
                3 => format!("%{i}"),
                4 => String::new(),
                5 => format!("-{}", "x".repeat(i % 70)),
                _ => format!("key{i}: {}", "v".repeat(i % 90)),
            };
            text.push_str(&line);
            text.push(if i % 11 == 0 { '\r' } else { ' ' });
            text.push('\n');
            let walk = line_walk(&text);
            assert_eq!(special_lines(&text), walk, "after line {i}");
            let trimmed = text.trim_end_matches('\n');
            let walk = line_walk(trimmed);
            assert_eq!(
                special_lines(trimmed),
                walk,
                "after line {i}, no final newline"
            );
        }
        assert!(special_lines("").is_empty());
        assert_eq!(special_lines("-"), vec![0]);
        assert_eq!(special_lines("\n-"), vec![1]);
    }

    #[test]
    fn other_stream_syntax_is_parsed_in_one_pass() {
        assert!(split_documents("a: 1\n...\nb: 2\n", 2).is_none());
        assert!(split_documents("%YAML 1.2\n---\na: 1\n", 2).is_none());
        assert!(split_documents("--- {a: 1}\n", 2).is_none());
        let p = split_documents("a: 1\n", 4).expect("no markers");
        assert_eq!(p, vec![("a: 1\n", 0)]);
    }
}
