//! Fuzzes the Calico selector parser: it must never panic, errors must point inside the input,
//! and whatever parses must print to a form that parses back to the same selector.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serval_model::selector::Selector;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    match Selector::parse(input) {
        Ok(selector) => {
            let printed = selector.to_string();
            let reparsed = Selector::parse(&printed)
                .unwrap_or_else(|e| panic!("{printed:?} (printed from {input:?}) fails: {e}"));
            assert_eq!(reparsed, selector, "round trip through {printed:?}");
            assert_eq!(reparsed.to_string(), printed, "printing is not idempotent");
            // Evaluation must not panic either.
            let labels = selector
                .referenced_keys()
                .into_iter()
                .map(|k| (k, String::from("v")))
                .collect();
            let _ = selector.matches(&labels);
            let _ = selector.matches_global(&labels);
        }
        Err(e) => {
            let len = input.chars().count();
            assert!(
                (1..=len + 1).contains(&e.column),
                "column {} outside 1..={} for {input:?}",
                e.column,
                len + 1
            );
        }
    }
});
