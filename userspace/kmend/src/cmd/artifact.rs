//! `kmend artifact pack|inspect`: build and check `.kmpatch` files (xtask
//! packs the sample patch with this; keep the flags stable).

use std::fs;

use anyhow::Context as _;
use kmend::{
    artifact::{
        Artifact,
        Manifest, //
    },
    exit::Exit,
};
use serde_json::json;

use crate::cli::ArtifactCommand;

pub fn run(command: ArtifactCommand, json: bool) -> anyhow::Result<Exit> {
    match command {
        ArtifactCommand::Pack { manifest, module, output } => {
            let text = fs::read(&manifest).with_context(|| format!("'{}': read failed", manifest.display()))?;
            let m: Manifest =
                serde_json::from_slice(&text).with_context(|| format!("'{}': not a kmend manifest", manifest.display()))?;
            let ko = fs::read(&module).with_context(|| format!("'{}': read failed", module.display()))?;
            let artifact = Artifact::new(m, ko).with_context(|| format!("'{}'", manifest.display()))?;
            artifact.write(&output)?;
            if json {
                super::print_json(&json!({ "artifact": output, "manifest": artifact.manifest }))?;
            } else {
                println!("{}: '{}' version {}", output.display(), artifact.manifest.id, artifact.manifest.version);
            }
        }
        ArtifactCommand::Inspect { file } => {
            let a = Artifact::read(&file).with_context(|| format!("'{}'", file.display()))?;
            let m = &a.manifest;
            if json {
                let signature = kmend::module_signature::appended(&a.module);
                super::print_json(&json!({ "manifest": m, "module_size": a.module.len(), "module_signature": signature }))?;
            } else {
                println!("id: {}", m.id);
                println!("version: {}", m.version);
                println!("description: {}", m.description);
                println!("kernel: {}", m.kernel);
                println!("cumulative: {}", if m.replace { "yes" } else { "no" });
                println!("cves: {}", m.cves.join(", "));
                println!("module: {} bytes, sha256 {}", a.module.len(), m.module_sha256);
                match kmend::module_signature::appended(&a.module) {
                    Some(s) => println!("module signature: appended (PKCS#7, {} bytes)", s.len),
                    None => println!("module signature: none (loads only where the kernel does not enforce signatures)"),
                }
                println!("functions:");
                for f in &m.functions {
                    println!("  {}:{} (sympos {}) -> {}", f.object, f.name, f.sympos, f.replacement);
                }
            }
        }
    }
    Ok(Exit::Ok)
}
