//! Which datastore a command talks to.

use anyhow::Context;
use serval_api::Client;

/// The default datastore when neither `--datastore` nor `SERVAL_DATASTORE` nor `--lab` is given.
pub const DEFAULT_URL: &str = "sqlite:///var/lib/serval/serval.db";

#[derive(Debug, Clone)]
pub struct Selection {
    pub url: Option<String>,
    pub lab: Option<String>,
}

impl Selection {
    pub fn url(&self) -> anyhow::Result<String> {
        if let Some(url) = &self.url {
            return Ok(url.clone());
        }
        if let Some(lab) = &self.lab {
            return lab_datastore_url(lab);
        }
        Ok(DEFAULT_URL.to_string())
    }

    pub async fn client(&self) -> anyhow::Result<Client> {
        let url = self.url()?;
        Client::open(&url)
            .await
            .with_context(|| format!("opening datastore {url}"))
    }
}

/// The datastore URL recorded by `serval lab up` for lab `name`.
fn lab_datastore_url(name: &str) -> anyhow::Result<String> {
    let path = std::path::Path::new("/var/lib/serval/labs")
        .join(name)
        .join("datastore");
    let url = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "lab {name:?} not found ({} missing); `serval lab status` lists labs",
            path.display()
        )
    })?;
    Ok(url.trim().to_string())
}
