//! Reading resource files given with `-f`: files, directories and stdin.

use std::io::Read;
use std::path::Path;

use anyhow::Context;
use serval_model::{Resource, ValidationErrors};

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
    for (name, text) in &sources {
        match serval_model::parse_documents(name, text) {
            Ok(rs) => resources.extend(rs),
            Err(ValidationErrors(es)) => errors.extend(es),
        }
    }
    if !errors.is_empty() {
        return Err(ValidationErrors(errors).into());
    }
    Ok(resources)
}
