//! `cargo xtask fixes`: how many real upstream fixes the diff builder
//! turns into live patches.
//!
//! Debian's archive has the Debian-patched kernel source at two stable
//! versions (xtask/src/pins.rs: the stock kernel's 7.2.12 and 7.2.13); the
//! difference between them is upstream stable fixes. The source packages
//! carry no per-commit history: each changed file is one candidate, except
//! that a changed header and the changed files that include it are one (an
//! upstream change to a header is used by its `.c` files). Each is built
//! against the stock kernel exactly as `cargo xtask patch build` builds a
//! diff patch. The table says, per candidate, what changed and whether a
//! patch came out, or why not; docs/real-fixes.md keeps the latest run.

use std::{
    collections::BTreeMap,
    fs,
    path::Path,
    process::Command,
    time::Instant,
};

use anyhow::Context as _;

use crate::{
    build,
    diff_patch,
    kernel::Flavor,
    modules,
    patch,
    paths,
    pins,
    setup,
};

/// One candidate's outcome.
struct Outcome {
    file: String,
    result: Result<Vec<String>, String>,
    secs: f64,
}

/// Runs the survey; `only` keeps candidates whose path contains it.
pub fn run(only: Option<&str>) -> anyhow::Result<()> {
    let kernel = build::kernels(&[Flavor::Stock])?.remove(0);
    let mods = modules::build(&kernel)?;
    let old = setup::kernel_source()?;
    let new = setup::source_package(pins::FIXES_SOURCE, pins::FIXES_SUITE)?;
    let work = paths::cache().join("fixes");
    fs::create_dir_all(&work)?;

    // The changed files.
    let listing = Command::new("diff").arg("-rq").arg(&old.dir).arg(&new.dir).output().context("diff -rq")?;
    let mut files: Vec<String> = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("Files ")?.split(" and ").next())
        .filter_map(|p| Path::new(p).strip_prefix(&old.dir).ok().map(|p| p.display().to_string()))
        .collect();
    files.sort();
    let added = String::from_utf8_lossy(&listing.stdout).lines().filter(|l| l.starts_with("Only in")).count();
    println!("xtask: {} changed files between {} and {} ({added} files only in one)", files.len(), old.version, new.version);
    // A header and the changed files that include it are one upstream
    // change as far as can be told: one candidate.
    let mut diffs = BTreeMap::new();
    for file in &files {
        let output = Command::new("diff")
            .args(["-u", "--label", &format!("a/{file}"), "--label", &format!("b/{file}")])
            .arg(old.dir.join(file))
            .arg(new.dir.join(file))
            .output()
            .with_context(|| format!("diff {file}"))?;
        diffs.insert(file.clone(), String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let groups: Vec<Vec<String>> =
        diff_patch::groups(&old.dir, &new.dir, &files, &diffs)?.into_iter().filter(|g| only.is_none_or(|o| g.iter().any(|f| f.contains(o)))).collect();
    for g in groups.iter().filter(|g| g.len() > 1) {
        println!("xtask: one candidate: {}", g.join(" + "));
    }
    let c_files: Vec<String> = groups.iter().flatten().filter(|f| f.ends_with(".c") && diff_patch::touched_files(&format!("+++ b/{f}\n")).is_ok()).cloned().collect();
    let unbuilt = diff_patch::precompile(&kernel, &c_files)?;

    let mut outcomes = Vec::new();
    for group in &groups {
        let start = Instant::now();
        let name = group.join(" + ");
        let lead = group.iter().find(|f| f.ends_with(".c")).unwrap_or(&group[0]);
        let id = survey_id(lead);
        let dir = work.join(&id);
        fs::create_dir_all(&dir)?;
        let diff: String = group.iter().map(|f| diffs[f].as_str()).collect();
        fs::write(dir.join("fix.patch"), &diff)?;
        fs::write(
            dir.join("patch.toml"),
            format!("id = \"{id}\"\ndescription = \"{name}: {} to {}\"\ndiff = \"fix.patch\"\n", old.version, new.version),
        )?;
        let result = diff_patch::touched_files(&diff)
            .and_then(|_| match group.iter().all(|f| unbuilt.contains(f)) {
                true => Err(anyhow::anyhow!("{name} is not built by the stock kernel's config")),
                false => patch::build(&kernel, &dir, &mods.kmend_symvers, &[]),
            })
            .map(|built| built.functions)
            .map_err(|e| short_reason(&e));
        let o = Outcome { file: name.clone(), result, secs: start.elapsed().as_secs_f64() };
        match &o.result {
            Ok(f) => println!("xtask: fixes: {name}: built ({}) in {:.0} s", f.join(", "), o.secs),
            Err(e) => println!("xtask: fixes: {name}: refused: {e}"),
        }
        outcomes.push(o);
    }
    print_table(&outcomes);
    Ok(())
}

/// The patch id of a candidate: `fix_<path>`, shortened with a hash of the
/// path where that would be longer than a module name may be (55).
fn survey_id(file: &str) -> String {
    use sha2::Digest as _;
    let id = format!("fix_{}", file.trim_end_matches(".c").replace(['/', '-', '.'], "_"));
    if id.len() <= 50 {
        return id;
    }
    let hash = hex::encode(&sha2::Sha256::digest(file.as_bytes())[..4]);
    format!("{}_{hash}", &id[..40])
}

/// The reason class of a refusal, for the totals.
fn class(reason: &str) -> &'static str {
    const CLASSES: &[(&str, &str)] = &[
        ("is not built by the stock kernel's config", "not in this kernel's config"),
        ("is not built into the stock kernel", "not in this kernel's config"),
        ("does not compile with the stock kernel's config", "not in this kernel's config"),
        ("no ftrace call site", "notrace code"),
        ("the stock modules package has no module", "not in this kernel's config"),
        ("symbols in module", "module symbol not placeable"),
        ("is not in module", "module symbol not placeable"),
        ("changes the data layout", "data layout change"),
        ("fixes to headers are built when", "header included too widely"),
        ("not built into an x86_64 kernel", "not in this kernel's config"),
        ("which no file the stock kernel's config builds includes", "not in this kernel's config"),
        ("cannot be live patched", "not C code"),
        ("only C sources", "not C code"),
        ("does not compile", "needs its other files"),
        ("changes no function's code", "no code change"),
        ("no function's code changed", "no code change"),
        ("init/exit", "init or shared section"),
        ("shared by several functions", "init or shared section"),
        ("special section", "special section"),
        ("symbols in the kernel", "kernel symbol not placeable"),
        ("static variable", "static variable not matched"),
        ("static '", "static variable not matched"),
        ("not in the kernel's symbol table", "kernel symbol not placeable"),
        ("deletes a file", "adds or removes files"),
    ];
    CLASSES.iter().find(|(needle, _)| reason.contains(needle)).map_or("other", |(_, c)| c)
}

/// One line saying why: the message, or for a failed build command the
/// first error of its log.
fn short_reason(error: &anyhow::Error) -> String {
    let text = format!("{error:#}");
    if let Some((_, tail)) = text.split_once("last lines of") {
        let line = tail.lines().find(|l| l.contains("error") || l.contains("ERROR")).unwrap_or("build failed");
        return format!("module build failed: {}", line.trim());
    }
    text.lines().next().unwrap_or_default().to_owned()
}

fn print_table(outcomes: &[Outcome]) {
    println!("\n| candidate | result | functions / reason | build s |");
    println!("|---|---|---|---|");
    for o in outcomes {
        match &o.result {
            Ok(f) => println!("| {} | built | {} | {:.0} |", o.file, f.join(", "), o.secs),
            Err(e) => println!("| {} | refused: {} | {} | {:.0} |", o.file, class(e), e.replace('|', "\\|"), o.secs),
        }
    }
    let built = outcomes.iter().filter(|o| o.result.is_ok()).count();
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    for o in outcomes {
        if let Err(e) = &o.result {
            *reasons.entry(class(e)).or_default() += 1;
        }
    }
    let reasons: Vec<String> = reasons.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!(
        "\nreal fixes: {} candidates, {built} built, {} refused ({})",
        outcomes.len(),
        outcomes.len() - built,
        reasons.join(", ")
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn survey_ids_fit_a_module_name() {
        let long = super::survey_id("drivers/net/ethernet/mellanox/mlx5/core/steering/hws/fs_hws.c");
        assert!(long.len() <= 55 && long.starts_with("fix_drivers_net_ethernet"), "{long}");
        assert_ne!(long, super::survey_id("drivers/net/ethernet/mellanox/mlx5/core/steering/hws/fs_hws2.c"));
        assert_eq!(super::survey_id("kernel/exit.c"), "fix_kernel_exit");
    }
}
