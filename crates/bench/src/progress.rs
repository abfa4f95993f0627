//! Progress lines on stderr while a run goes on.

use std::time::Instant;

/// Prefixes every line with the time since the run started.
#[derive(Debug)]
pub struct Progress {
    start: Instant,
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}

impl Progress {
    pub fn new() -> Progress {
        Progress {
            start: Instant::now(),
        }
    }

    pub fn line(&self, msg: &str) {
        eprintln!("[{:>7.1}s] {msg}", self.start.elapsed().as_secs_f64());
    }

    pub fn elapsed_s(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
}

/// `1234.5 µs` / `12.3 ms` / `1.23 s` from microseconds.
pub fn human_us(us: f64) -> String {
    if us < 1_000.0 {
        format!("{us:.0} µs")
    } else if us < 1_000_000.0 {
        format!("{:.1} ms", us / 1_000.0)
    } else {
        format!("{:.2} s", us / 1_000_000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(human_us(512.3), "512 µs");
        assert_eq!(human_us(12_340.0), "12.3 ms");
        assert_eq!(human_us(2_500_000.0), "2.50 s");
    }
}
