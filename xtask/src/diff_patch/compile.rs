//! The objects a fix touches, compiled before and after it with the target
//! kernel's exact source, config and compiler (the toolchain chroot).
//!
//! Only the touched files are compiled, never the kernel. Both builds use
//! `-ffunction-sections -fdata-sections`, so every function and variable
//! has its own section and can be compared and copied on its own. The
//! original object comes from `make <file>.o` in a copy of the kernel's
//! prepared build tree (made once per kernel and kept: later fixes rebuild
//! only the objects they touch); the patched one from the same compiler
//! command, which kbuild records in `.<file>.o.cmd`, run on the patched
//! file.

use std::{
    fs,
    path::{
        Path,
        PathBuf, //
    },
    process::Command,
};

use anyhow::{
    Context as _,
    anyhow,
    bail,
    ensure, //
};

use super::{
    header_change,
    includers, //
};
use crate::{
    kernel::{
        Flavor,
        Kernel, //
    },
    paths,
    pins,
    run::{
        exec,
        exec_logged,
        stamp_matches,
        write_stamp, //
    },
};

/// Compiler flags both builds add (what `klp-build` builds with, too).
const SECTION_FLAGS: &str = "-ffunction-sections -fdata-sections";

/// One touched source file and its two objects.
pub struct ObjectPair {
    /// Path in the kernel tree, e.g. `kernel/exit.c`.
    pub source: String,
    pub orig: PathBuf,
    pub patched: PathBuf,
    /// The module the file is built into (kbuild's `KBUILD_MODNAME`);
    /// `None` for code built into the kernel image.
    pub module: Option<String>,
    /// Compiled because it includes a header the fix changes, not because
    /// the diff changes it: when its code is not in the running kernel
    /// (another config's file), it is left out, not refused.
    pub by_header: bool,
}

/// The files a unified diff changes (`+++ b/<path>` lines: C sources and
/// headers), refusing what the builder cannot turn into a live patch yet,
/// with the reason.
pub fn touched_files(diff: &str) -> anyhow::Result<Vec<String>> {
    let mut files = Vec::new();
    for line in diff.lines() {
        let Some(rest) = line.strip_prefix("+++ ") else { continue };
        let path = rest.split(['\t', ' ']).next().unwrap_or_default();
        ensure!(path != "/dev/null", "the diff deletes a file: a live patch cannot remove code from the kernel");
        let path = path.split_once('/').map_or(path, |(_, p)| p);
        ensure!(
            !path.is_empty() && !path.starts_with('/') && !path.split('/').any(|c| c == ".."),
            "the diff names a file outside the kernel tree: '{path}'"
        );
        if path.starts_with("tools/") || (path.starts_with("arch/") && !path.starts_with("arch/x86/")) {
            bail!("the diff changes {path}, which is not built into an x86_64 kernel (user-space tools or another architecture)");
        }
        if path.ends_with(".S") || path.starts_with("lib/") || path.contains("/vdso/") {
            bail!("the diff changes {path}: assembly, lib/ and the vDSO cannot be live patched");
        }
        ensure!(path.ends_with(".c") || path.ends_with(".h"), "the diff changes {path}: only C sources and headers (.c, .h) are supported");
        if !files.contains(&path.to_owned()) {
            files.push(path.to_owned());
        }
    }
    ensure!(!files.is_empty(), "the diff changes no file (is it a unified diff with '+++ b/<path>' lines?)");
    Ok(files)
}

/// Compiles the original objects of many files at once (`make -k`), so
/// that later builds of each find them made; failures are left for those
/// builds to report one by one.
/// Returns the files kbuild has no rule for (not built by this config).
pub fn precompile(kernel: &Kernel, files: &[String]) -> anyhow::Result<Vec<String>> {
    if files.is_empty() {
        return Ok(Vec::new()); // `make` with no target would build the kernel.
    }
    let tree = object_tree(kernel)?;
    let targets: Vec<String> = files.iter().map(|f| format!("{}.o", f.trim_end_matches(".c"))).collect();
    let mut make = crate::kernel::make_in(&kernel.chroot, &kernel.src, &tree);
    make.arg(format!("KERNELRELEASE={}", pins::STOCK_RELEASE))
        .arg(format!("KCFLAGS={SECTION_FLAGS}"))
        .arg("-k")
        .arg(crate::kernel::jobs())
        .args(&targets);
    let log = paths::cache().join("logs/diff-precompile.log");
    let _ = exec_logged(&mut make, &log);
    let said = fs::read_to_string(&log).unwrap_or_default();
    Ok(files
        .iter()
        .zip(&targets)
        .filter(|(_, t)| said.contains(&format!("No rule to make target '{t}'")))
        .map(|(f, _)| f.clone())
        .collect())
}

/// A copy of the kernel's prepared build tree in which single objects are
/// compiled; made again only when the kernel's tree changes.
fn object_tree(kernel: &Kernel) -> anyhow::Result<PathBuf> {
    ensure!(
        kernel.flavor == Flavor::Stock,
        "fixes from diffs are built for Debian's stock kernel; the debug kernel is not supported yet"
    );
    let tree = kernel.out_dir("diff-objects");
    let want = fs::read_to_string(kernel.build.join(".kmend-stamp")).context("the stock build tree has no stamp")?;
    let stamp = tree.with_extension("stamp");
    if !stamp_matches(&stamp, want.trim()) {
        if tree.exists() {
            fs::remove_dir_all(&tree).with_context(|| format!("remove {}", tree.display()))?;
        }
        exec(Command::new("cp").arg("-a").arg(&kernel.build).arg(&tree))?;
        write_stamp(&stamp, want.trim())?;
    }
    Ok(tree)
}

/// Compiles each touched file of `diff` (at `diff_path`) before and after
/// the fix, into `out/orig/` and `out/patched/`.
///
/// A changed header adds the files that include it (see [`includers`]),
/// those this config builds; each compiles against the patched headers
/// (see [`patched_command`]).
pub fn compile(kernel: &Kernel, diff_path: &Path, touched: &[String], out: &Path) -> anyhow::Result<Vec<ObjectPair>> {
    let tree = object_tree(kernel)?;
    let log = |what: &str| paths::cache().join(format!("logs/diff-{what}.log"));
    let mut files: Vec<String> = touched.iter().filter(|f| f.ends_with(".c")).cloned().collect();
    let mut headers: Vec<String> = touched.iter().filter(|f| f.ends_with(".h")).cloned().collect();
    // A `.c` file another one includes (the scheduler's build_policy.c
    // includes ext/ext.c) is compiled in that file's object, with the
    // inlining of that object: compiled alone, a copy could miss a caller
    // the kernel inlined a changed function into. It counts as a header.
    for f in files.clone() {
        if !built_alone(&kernel.src, &f) && !includers::includers(&kernel.src, std::slice::from_ref(&f)).unwrap_or_default().is_empty() {
            println!("xtask: {f} is compiled as part of the files that include it");
            files.retain(|x| *x != f);
            headers.push(f);
        }
    }

    // The patched sources: a mirror of the tree (see [`mirror`]) in which
    // the touched files are copies, then patched.
    let patched_src = out.join("patched-src");
    if patched_src.exists() {
        fs::remove_dir_all(&patched_src)?;
    }
    mirror(&kernel.src, &patched_src, touched.iter())?;
    for f in touched {
        let to = patched_src.join(f);
        fs::remove_file(&to).with_context(|| format!("the kernel source has no {f} (is the diff for this kernel?)"))?;
        fs::copy(kernel.src.join(f), &to).with_context(|| format!("copy {f}"))?;
    }
    let output = Command::new("patch")
        .args(["-p1", "--batch", "--forward", "--no-backup-if-mismatch", "-r", "-", "-d"])
        .arg(&patched_src)
        .arg("-i")
        .arg(std::path::absolute(diff_path)?)
        .output()
        .context("failed to run patch(1)")?;
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    ensure!(output.status.success(), "{} does not apply to the {} kernel's source:\n{said}", diff_path.display(), kernel.release);
    if said.contains("fuzz") || said.contains("offset") {
        println!("xtask: warning: {} applied with offset or fuzz:\n{said}", diff_path.display());
    }

    // What the changed headers reach, compiled too (in the mirror as well).
    let mut by_header = Vec::new();
    if !headers.is_empty() {
        let reached: Vec<String> = header_includers(kernel, &patched_src, &headers)?.into_iter().filter(|f| !files.contains(f)).collect();
        let unbuilt = precompile(kernel, &reached)?;
        by_header = reached.into_iter().filter(|f| !unbuilt.contains(f)).collect();
        println!("xtask: {} included by {} other file(s) this config builds", headers.join(", "), by_header.len());
        ensure!(
            !files.is_empty() || !by_header.is_empty(),
            "the diff changes the header {}, which no file the stock kernel's config builds includes",
            headers.join(", ")
        );
        mirror(&kernel.src, &patched_src, by_header.iter())?;
    }

    // The originals, through kbuild (which takes seconds to find an object
    // up to date: skipped when every object is newer than its source; the
    // source of a kernel version never changes). A file of the diff this
    // config does not build is left out, unless none is built.
    let mtime = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
    let object = |f: &String| format!("{}.o", f.trim_end_matches(".c"));
    let made = |f: &String| matches!((mtime(&tree.join(object(f))), mtime(&kernel.src.join(f))), (Some(o), Some(s)) if o >= s);
    if !files.iter().all(made) {
        let mut make = crate::kernel::make_in(&kernel.chroot, &kernel.src, &tree);
        make.arg(format!("KERNELRELEASE={}", pins::STOCK_RELEASE)).arg(format!("KCFLAGS={SECTION_FLAGS}")).arg("-k");
        make.args(files.iter().map(object));
        if exec_logged(&mut make, &log("orig")).is_err() {
            let said = fs::read_to_string(log("orig")).unwrap_or_default();
            let (built, not): (Vec<String>, Vec<String>) = files.iter().cloned().partition(made);
            if built.is_empty() && by_header.is_empty() {
                if said.contains("No rule to make target") || said.contains("No such file or directory") {
                    bail!("{} is not built by the stock kernel's config", files.join(", "));
                }
                let first = said.lines().find(|l| l.contains("error:")).unwrap_or("see the log").trim();
                let first = first.rsplit_once("error:").map_or(first, |(_, e)| e.trim());
                bail!(
                    "{} does not compile with the stock kernel's config (not built into it?): {first} (log: {})",
                    files.join(", "),
                    log("orig").display()
                );
            }
            println!("xtask: {}: not built by the stock kernel's config: left out", not.join(", "));
            files = built;
        }
    }
    let targets: Vec<String> = files.iter().map(object).collect();

    let mut pairs = Vec::new();
    let all: Vec<(&String, String)> =
        files.iter().zip(targets.iter().cloned()).chain(by_header.iter().map(|f| (f, format!("{}.o", f.trim_end_matches(".c"))))).collect();
    for (file, target) in all {
        let target = &target;
        let orig = out.join("orig").join(target);
        let patched = out.join("patched").join(target);
        for p in [&orig, &patched] {
            fs::create_dir_all(p.parent().unwrap_or(out))?;
        }
        let is_by_header = by_header.contains(file);
        if is_by_header && !tree.join(target).exists() {
            continue; // Includes the header, but does not compile with this config.
        }
        fs::copy(tree.join(target), &orig).with_context(|| format!("kbuild made no {target}: is {file} built into vmlinux by this config?"))?;
        let (command, module) = patched_command(&tree, target, file, kernel, &patched_src, &patched)?;
        let mut run = kernel.chroot.command_binding(&tree, &[out.to_owned()]);
        run.args(["sh", "-c", &command]);
        if exec_logged(&mut run, &log("patched")).is_err() {
            let said = fs::read_to_string(log("patched")).unwrap_or_default();
            let first = said.lines().find(|l| l.contains("error:")).unwrap_or("see the log").trim();
            let first = first.rsplit_once("error:").map_or(first, |(_, e)| e.trim());
            bail!(
                "the patched {file} does not compile with the rest of the diff (does the fix change other files too?): {first} (log: {})",
                log("patched").display()
            );
        }
        pairs.push(ObjectPair { source: file.clone(), orig, patched, module, by_header: is_by_header });
    }
    Ok(pairs)
}

/// Whether kbuild may build `file` as an object of its own: the Makefile
/// (or Kbuild) of its directory or of the one above names `<name>.o`.
fn built_alone(src: &Path, file: &str) -> bool {
    let path = Path::new(file);
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let object = format!("{stem}.o");
    path.ancestors().skip(1).take(2).any(|dir| {
        ["Makefile", "Kbuild"].iter().any(|m| fs::read_to_string(src.join(dir).join(m)).is_ok_and(|t| t.contains(&object)))
    })
}

/// The files that include the changed `headers` (patched in the mirror
/// `patched_src`). A header too many files include is built only when its
/// change merely adds names (see [`header_change`]): then only the diff's
/// own files use them and are compiled.
fn header_includers(kernel: &Kernel, patched_src: &Path, headers: &[String]) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for h in headers {
        match includers::includers(&kernel.src, std::slice::from_ref(h)) {
            Ok(list) => out.extend(list),
            Err(too_many) => {
                let old = fs::read_to_string(kernel.src.join(h)).with_context(|| format!("read {h}"))?;
                let new = fs::read_to_string(patched_src.join(h)).with_context(|| format!("read the patched {h}"))?;
                if !header_change::only_adds_names(&old, &new) {
                    return Err(anyhow!("{too_many}, or when the change only adds names; this one does more"));
                }
                println!("xtask: {h}: the change only adds names: the files that include it and do not use them are not compiled");
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// A mirror of the kernel tree `src` at `to` for compiling `files` after
/// the fix: the directories holding them and their parents are real, every
/// other entry a symlink into the tree, so that the compiler, which takes
/// `"x.h"` and `"../x.h"` relative to the path it opened, finds every file
/// through the mirror and the touched ones as patched. A few hundred
/// symlinks where a full copy of the tree would be 95,000.
fn mirror<'a>(src: &Path, to: &Path, files: impl Iterator<Item = &'a String>) -> anyhow::Result<()> {
    let mut dirs = std::collections::BTreeSet::new();
    for f in files {
        let mut dir = Path::new(f).parent();
        while let Some(d) = dir {
            dirs.insert(d.to_owned());
            dir = d.parent();
        }
    }
    // Parents first: a directory linked before is made real, once.
    for dir in &dirs {
        let here = to.join(dir);
        if here.is_symlink() {
            fs::remove_file(&here)?;
        } else if here.is_dir() {
            continue;
        }
        fs::create_dir_all(&here)?;
        for entry in fs::read_dir(src.join(dir)).with_context(|| format!("list {}", src.join(dir).display()))? {
            let path = dir.join(entry?.file_name());
            std::os::unix::fs::symlink(src.join(&path), to.join(&path)).with_context(|| format!("link {}", to.join(&path).display()))?;
        }
    }
    Ok(())
}

/// kbuild's command for `target`, turned to compile the patched file into
/// `patched`: same flags, with the tree's paths in the mirror (`__FILE__`
/// as in the tree).
/// Also returns the module the object is built into, if any.
fn patched_command(
    tree: &Path,
    target: &str,
    file: &str,
    kernel: &Kernel,
    patched_src: &Path,
    patched: &Path,
) -> anyhow::Result<(String, Option<String>)> {
    let (dir, name) = target.rsplit_once('/').unwrap_or(("", target));
    let cmd_file = tree.join(dir).join(format!(".{name}.cmd"));
    let text = fs::read_to_string(&cmd_file).with_context(|| format!("read {}", cmd_file.display()))?;
    let line = text.lines().find(|l| l.starts_with("savedcmd_")).ok_or_else(|| anyhow!("{}: no savedcmd", cmd_file.display()))?;
    let cmd = line.split_once(" := ").map(|(_, c)| c.trim_end()).ok_or_else(|| anyhow!("{}: malformed", cmd_file.display()))?;
    let module = match cmd.contains(" -DMODULE ") {
        true => Some(module_name(cmd).ok_or_else(|| anyhow!("{}: a module object without KBUILD_MODNAME", cmd_file.display()))?),
        false => None,
    };
    let src = kernel.src.join(file);
    let tail = format!(" -c -o {target} {}", src.display());
    // A module's object is also checked and annotated by objtool right
    // after it is compiled (`; ./tools/objtool/objtool ... --module <o>`;
    // the kernel image's are, once, on vmlinux.o): the patched object gets
    // the same, so both are compared in the same form.
    let Some((head, post)) = cmd.split_once(&tail).filter(|(_, post)| post.is_empty() || post.trim_start().starts_with(';')) else {
        bail!("{}: the compile command does not end with '{tail}': cannot rebuild {file} alone", cmd_file.display());
    };
    let post = match post.trim() {
        "" => String::new(),
        post if post.ends_with(&format!(" --module {target}")) => {
            format!(" {}{}", post.strip_suffix(target).unwrap_or(post), patched.display())
        }
        post => bail!("{}: after the compiler kbuild runs '{post}': cannot rebuild {file} alone", cmd_file.display()),
    };
    let (compiler, flags) = head.split_once(' ').ok_or_else(|| anyhow!("{}: malformed", cmd_file.display()))?;
    let depfile = format!("-Wp,-MMD,{dir}/.{name}.d");
    let flags = flags.replace(&depfile, &format!("-Wp,-MMD,{}.d", patched.display()));
    // Everything the compiler opens under the tree, it opens in the mirror.
    let flags = flags.replace(&format!("{}/", kernel.src.display()), &format!("{}/", patched_src.display()));
    let command = format!(
        "{compiler} -fmacro-prefix-map={}/= {flags} -c -o {} {}{post}",
        patched_src.display(),
        patched.display(),
        patched_src.join(file).display()
    );
    Ok((command, module))
}

/// The module name kbuild compiles an object for: `-DKBUILD_MODNAME='"x"'`.
fn module_name(cmd: &str) -> Option<String> {
    let rest = cmd.split_once("-DKBUILD_MODNAME='\"")?.1;
    let name = rest.split_once("\"'")?.0;
    (!name.is_empty() && name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')).then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::{
        built_alone,
        module_name,
        touched_files, //
    };

    #[test]
    fn module_objects_name_their_module() {
        let cmd = "gcc -Wp,-MMD,net/ipv4/.tcp_dctcp.o.d -nostdinc -DMODULE -DKBUILD_BASENAME='\"tcp_dctcp\"' -DKBUILD_MODNAME='\"tcp_dctcp\"' -D__KBUILD_MODNAME=kmod_tcp_dctcp -c -o net/ipv4/tcp_dctcp.o net/ipv4/tcp_dctcp.c";
        assert_eq!(module_name(cmd).as_deref(), Some("tcp_dctcp"));
        assert_eq!(module_name("gcc -DKBUILD_MODNAME='\"a;b\"' -c"), None);
        assert_eq!(module_name("gcc -c -o kernel/exit.o kernel/exit.c"), None);
    }

    #[test]
    fn touched_files_are_the_c_files_of_the_diff() {
        let diff = "--- a/kernel/exit.c\n+++ b/kernel/exit.c\n@@ -1 +1 @@\n-a\n+b\n--- a/ipc/namespace.c\t2026\n+++ b/ipc/namespace.c\t2026\n";
        assert_eq!(touched_files(diff).unwrap(), ["kernel/exit.c", "ipc/namespace.c"]);
        let header = "--- a/include/linux/x.h\n+++ b/include/linux/x.h\n";
        assert_eq!(touched_files(header).unwrap(), ["include/linux/x.h"]);
        assert!(touched_files("+++ b/tools/arch/x86/include/asm/insn.h\n").unwrap_err().to_string().contains("not built into an x86_64 kernel"));
        assert!(touched_files("+++ b/arch/nios2/include/asm/checksum.h\n").is_err());
        assert!(touched_files("+++ b/arch/x86/entry/entry_64.S\n").is_err());
        assert!(touched_files("+++ b/../../etc/passwd.c\n").is_err());
        assert!(touched_files("+++ /dev/null\n").is_err());
        assert!(touched_files("not a diff\n").is_err());
    }

    /// kbuild builds the scheduler's policies as one object, build_policy.o,
    /// which includes ext/ext.c: the kernel has no ext.o, and a copy compiled
    /// from ext.c alone got another translation unit's inlining (the two
    /// sched_ext fixes were built so and applied in the guest). A file whose
    /// directory's Makefile, or the one above, names no object of it is not
    /// built alone; one named (ext4's extents.c, which includes its KUnit
    /// test) is.
    #[test]
    fn a_file_the_makefiles_name_no_object_of_is_not_built_alone() {
        let tree = std::env::temp_dir().join(format!("kmend-built-alone-{}", std::process::id()));
        for (path, text) in [
            ("kernel/sched/Makefile", "obj-y += core.o\nobj-y += build_policy.o\n"),
            ("kernel/sched/build_policy.c", "# include \"ext/ext.c\"\n"),
            ("kernel/sched/ext/ext.c", ""),
            ("fs/ext4/Makefile", "ext4-y := balloc.o extents.o\n"),
            ("fs/ext4/extents.c", "#include \"extents-test.c\"\n"),
        ] {
            fs::create_dir_all(tree.join(path).parent().unwrap()).unwrap();
            fs::write(tree.join(path), text).unwrap();
        }
        let alone = |f: &str| built_alone(&tree, f);
        assert!(!alone("kernel/sched/ext/ext.c"), "no ext.o in kernel/sched/ext or kernel/sched");
        assert!(alone("kernel/sched/build_policy.c"));
        assert!(alone("fs/ext4/extents.c"));
        assert!(!alone("fs/ext4/extents-test.c"));
        fs::remove_dir_all(&tree).unwrap();
    }
}
