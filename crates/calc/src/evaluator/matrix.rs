//! Reachability matrices: what the evaluator expects between pods, in the same table form
//! `serval lab matrix` prints (a header `-` + targets, one row per source, `.` reached and
//! `X` not, separated by tabs or spaces).

use std::fmt;

use serde::{Deserialize, Serialize};
use serval_model::net::IpFamily;

use super::{Evaluator, Packet};
use crate::endpoints::EndpointKey;
use crate::model::Model;
use crate::policy::IpProto;

/// `reachable[from][to]` over `pods` (`NS/POD`), which order both rows and columns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Matrix {
    pub pods: Vec<String>,
    pub reachable: Vec<Vec<bool>>,
}

/// A table that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MatrixError {
    #[error("the table is empty; write a header line `- ns/a ns/b ...` and one row per pod")]
    Empty,
    #[error("line {line}: the header must start with `-`, then the pods (found {found:?})")]
    Header { line: usize, found: String },
    #[error(
        "line {line}: row {found:?} should be for pod {expected} (rows follow the header's order)"
    )]
    RowOrder {
        line: usize,
        expected: String,
        found: String,
    },
    #[error(
        "line {line}: {found} cells for {expected} pods; use `.` (reached) or `X` (not) per column"
    )]
    Width {
        line: usize,
        expected: usize,
        found: usize,
    },
    #[error("line {line}: cell {cell:?} is not `.` (reached) or `X` (not reached)")]
    Cell { line: usize, cell: String },
    #[error("{found} rows for {expected} pods; add a row per pod")]
    Height { expected: usize, found: usize },
}

/// One cell where two matrices disagree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub from: String,
    pub to: String,
    pub expected: bool,
    pub actual: bool,
}

impl Matrix {
    /// A matrix with every cell `value`.
    pub fn filled(pods: Vec<String>, value: bool) -> Matrix {
        let n = pods.len();
        Matrix {
            pods,
            reachable: vec![vec![value; n]; n],
        }
    }

    /// Parses the table form (see the module docs). Blank lines and lines starting with `#`
    /// are skipped.
    pub fn parse(text: &str) -> Result<Matrix, MatrixError> {
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim()))
            .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
        let (hline, header) = lines.next().ok_or(MatrixError::Empty)?;
        let mut cols = header.split_whitespace();
        if cols.next() != Some("-") {
            return Err(MatrixError::Header {
                line: hline,
                found: header.to_string(),
            });
        }
        let pods: Vec<String> = cols.map(str::to_string).collect();
        if pods.is_empty() {
            return Err(MatrixError::Header {
                line: hline,
                found: header.to_string(),
            });
        }
        let mut reachable = Vec::new();
        for (line, row) in lines {
            let mut cells = row.split_whitespace();
            let from = cells.next().unwrap_or_default();
            let expected = pods.get(reachable.len()).cloned().unwrap_or_default();
            if from != expected {
                return Err(MatrixError::RowOrder {
                    line,
                    expected,
                    found: from.to_string(),
                });
            }
            let cells: Vec<&str> = cells.collect();
            if cells.len() != pods.len() {
                return Err(MatrixError::Width {
                    line,
                    expected: pods.len(),
                    found: cells.len(),
                });
            }
            let row = cells
                .iter()
                .map(|c| match *c {
                    "." => Ok(true),
                    "X" | "x" => Ok(false),
                    other => Err(MatrixError::Cell {
                        line,
                        cell: other.to_string(),
                    }),
                })
                .collect::<Result<Vec<bool>, _>>()?;
            reachable.push(row);
        }
        if reachable.len() != pods.len() {
            return Err(MatrixError::Height {
                expected: pods.len(),
                found: reachable.len(),
            });
        }
        Ok(Matrix { pods, reachable })
    }

    /// The table form, tab-separated (as `serval lab matrix` prints it).
    pub fn table(&self) -> String {
        let mut out = String::from("-");
        for p in &self.pods {
            out.push('\t');
            out.push_str(p);
        }
        out.push('\n');
        for (i, from) in self.pods.iter().enumerate() {
            out.push_str(from);
            for ok in &self.reachable[i] {
                out.push('\t');
                out.push(if *ok { '.' } else { 'X' });
            }
            out.push('\n');
        }
        out
    }

    /// `reachable[from][to]` by name.
    pub fn get(&self, from: &str, to: &str) -> Option<bool> {
        let i = self.pods.iter().position(|p| p == from)?;
        let j = self.pods.iter().position(|p| p == to)?;
        Some(self.reachable[i][j])
    }

    /// The cells where `actual` differs from `self` (matched by pod name; pods missing in
    /// `actual` count as unreachable).
    pub fn mismatches(&self, actual: &Matrix) -> Vec<Mismatch> {
        let mut out = Vec::new();
        for (i, from) in self.pods.iter().enumerate() {
            for (j, to) in self.pods.iter().enumerate() {
                let expected = self.reachable[i][j];
                let got = actual.get(from, to).unwrap_or(false);
                if expected != got {
                    out.push(Mismatch {
                        from: from.clone(),
                        to: to.clone(),
                        expected,
                        actual: got,
                    });
                }
            }
        }
        out
    }
}

impl fmt::Display for Matrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.table())
    }
}

/// What the evaluator expects between `pods` on `port`/`protocol` over `family`: reached iff
/// allowed. A pod without an address of the family neither sends nor is reached.
pub fn expected_matrix(
    model: &Model,
    pods: &[(String, String)],
    port: u16,
    protocol: IpProto,
    family: IpFamily,
) -> Matrix {
    let ev = Evaluator::new(model);
    let addr = |ns: &str, pod: &str| {
        ev.state()
            .endpoints
            .get(&EndpointKey::new(ns, pod))
            .and_then(|(e, _)| {
                e.addrs
                    .iter()
                    .find(|a| IpFamily::of_addr(a) == family)
                    .copied()
            })
    };
    let names = pods.iter().map(|(ns, p)| format!("{ns}/{p}")).collect();
    let reachable = pods
        .iter()
        .map(|(fns, fpod)| {
            pods.iter()
                .map(|(tns, tpod)| {
                    let (Some(src), Some(dst)) = (addr(fns, fpod), addr(tns, tpod)) else {
                        return false;
                    };
                    let mut p = Packet::l4(src, dst, protocol, port);
                    p.sender = Some(EndpointKey::new(fns, fpod));
                    ev.evaluate(&p).allowed
                })
                .collect()
        })
        .collect();
    Matrix {
        pods: names,
        reachable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_round_trip_and_report_errors() {
        let text = "-\tx/a\tx/b\nx/a\t.\tX\nx/b\t.\t.\n";
        let m = Matrix::parse(text).unwrap();
        assert_eq!(m.table(), text);
        assert_eq!(m.get("x/a", "x/b"), Some(false));
        assert!(matches!(
            Matrix::parse("- x/a x/b\nx/b . .\nx/a . ."),
            Err(MatrixError::RowOrder { line: 2, .. })
        ));
        assert!(matches!(
            Matrix::parse("- x/a\nx/a ?"),
            Err(MatrixError::Cell { .. })
        ));
        assert!(matches!(
            Matrix::parse("- x/a x/b\nx/a . ."),
            Err(MatrixError::Height { .. })
        ));
        let all = Matrix::filled(m.pods.clone(), true);
        let mm = m.mismatches(&all);
        assert_eq!(mm.len(), 1);
        assert_eq!((mm[0].from.as_str(), mm[0].to.as_str()), ("x/a", "x/b"));
    }
}
