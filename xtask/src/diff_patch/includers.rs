//! The source files a header reaches. A fix to a header changes the code
//! of every object whose source includes it, directly or through other
//! headers: each is compiled before and after the fix and compared, as a
//! changed `.c` file is. kbuild knows these dependencies only for objects
//! it has built, and the stock kernel was built elsewhere, so they are read
//! from the source's `#include` lines (one `grep` over the tree, kept per
//! source tree).
//!
//! An include resolves as the compiler does for the usual cases: `"x.h"`
//! next to the including file, then the kernel's include roots; a name
//! found in neither (a driver's `-I` flag) matches any header outside the
//! roots whose path ends with it, in the includer's area (the first two
//! parts of both paths agree: `drivers/gpu`, `net/mac802154`). That errs towards more files: an object
//! compiled and compared for nothing costs a few seconds, one missed would
//! keep running the unfixed inline code.

use std::{
    collections::BTreeSet,
    fs,
    path::{
        Component,
        Path,
        PathBuf, //
    },
    process::Command,
};

use anyhow::{
    Context as _,
    ensure, //
};

use crate::paths;

/// At most this many source files are compiled for the headers of one fix;
/// a fix to a header more files include is refused (it would take the
/// best part of a kernel build, as `klp-build` does on every run).
pub const LIMIT: usize = 48;

/// Where `#include <...>` looks, in the kernel's order (x86_64).
const ROOTS: &[&str] = &[
    "arch/x86/include/",
    "include/",
    "arch/x86/include/uapi/",
    "include/uapi/",
];

/// One `#include` line: the including file, the name, and whether quoted.
struct Include {
    file: String,
    name: String,
    quoted: bool,
}

/// The `.c` files (sorted) of the kernel tree `src` that include any of
/// `headers`, directly or through other headers; refused beyond [`LIMIT`].
pub fn includers(src: &Path, headers: &[String]) -> anyhow::Result<Vec<String>> {
    let index = Index::load(src)?;
    let sources = index.reach(headers, Some(LIMIT));
    ensure!(
        sources.len() <= LIMIT,
        "the fix changes the header {}, which more than {LIMIT} source files include: fixes to headers are built when at most {LIMIT} files include them (each is compiled and compared)",
        headers.join(", ")
    );
    Ok(sources)
}

/// The files of `changed` (paths in the trees `old` and `new`, with their
/// unified diffs in `diffs`) that belong together: each header with the
/// changed files that include it, where few enough files include it to
/// build it (see [`includers`]); a header more files include, with the
/// changed files whose diff uses a name its diff adds (a new macro, member
/// or helper); every other file on its own. Groups keep the order of
/// `changed`.
pub fn groups(old: &Path, new: &Path, changed: &[String], diffs: &std::collections::BTreeMap<String, String>) -> anyhow::Result<Vec<Vec<String>>> {
    let index = Index::load(new)?;
    let mut names = std::collections::HashMap::new();
    for h in changed.iter().filter(|f| f.ends_with(".h")) {
        let before = fs::read_to_string(old.join(h)).unwrap_or_default();
        names.insert(h.clone(), added_names(&before, diffs.get(h).map_or("", String::as_str)));
    }
    // A file's change uses a header's new name when its added lines name
    // it and the file did not before (a common word a header newly uses,
    // as `unlikely`, is in the file already).
    Ok(index.groups(changed, &|header, file| {
        let added = &names[header];
        let before = fs::read_to_string(old.join(file)).unwrap_or_default();
        let mine = added_names(&before, diffs.get(file).map_or("", String::as_str));
        mine.iter().any(|n| added.contains(n))
    }))
}

/// Identifiers a diff's added lines have that the file before it does not.
fn added_names(before: &str, diff: &str) -> BTreeSet<String> {
    let known: BTreeSet<&str> = identifiers(before).collect();
    // The code of the added lines, without comments.
    let mut in_comment = false;
    let code: Vec<String> = diff
        .lines()
        .filter(|l| l.starts_with('+') && !l.starts_with("+++"))
        .map(|l| super::header_change::strip_comments(&l[1..], &mut in_comment))
        .collect();
    code.iter().flat_map(|l| identifiers(l)).filter(|i| !known.contains(i) && i.len() >= 4).map(str::to_owned).collect()
}

fn identifiers(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| w.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_'))
}

impl Index {
    /// `uses(header, file)`: whether `file`'s change uses what the change
    /// to `header` adds, for headers too many files include.
    fn groups(&self, changed: &[String], uses: &dyn Fn(&str, &str) -> bool) -> Vec<Vec<String>> {
        let mut group: Vec<usize> = (0..changed.len()).collect();
        fn root(group: &mut [usize], mut i: usize) -> usize {
            while group[i] != i {
                group[i] = group[group[i]];
                i = group[i];
            }
            i
        }
        for (h, header) in changed.iter().enumerate().filter(|(_, f)| f.ends_with(".h")) {
            let reached = self.reach_all(header, Some(LIMIT));
            let wide = reached.iter().filter(|f| f.ends_with(".c")).count() > LIMIT;
            for (i, file) in changed.iter().enumerate() {
                let joins = match wide {
                    false => reached.contains(file),
                    true => i != h && uses(header, file),
                };
                if joins {
                    let (a, b) = (root(&mut group, h), root(&mut group, i));
                    group[a.max(b)] = a.min(b);
                }
            }
        }
        let mut out: Vec<Vec<String>> = Vec::new();
        let mut slot = std::collections::HashMap::new();
        for (i, file) in changed.iter().enumerate() {
            let r = root(&mut group, i);
            let n = *slot.entry(r).or_insert_with(|| {
                out.push(Vec::new());
                out.len() - 1
            });
            out[n].push(file.clone());
        }
        out
    }
}

/// Every `#include` of the tree's C files that an x86_64 kernel may build,
/// by the last part of the name, read once per source tree and kept in the
/// cache.
struct Index {
    by_name: std::collections::HashMap<String, Vec<Include>>,
    src: PathBuf,
}

impl Index {
    fn load(src: &Path) -> anyhow::Result<Index> {
        Ok(Index::new(&read_index(src)?, src))
    }

    fn new(text: &str, src: &Path) -> Index {
        let mut by_name: std::collections::HashMap<String, Vec<Include>> =
            std::collections::HashMap::new();
        for inc in parse(text) {
            by_name
                .entry(inc.name.rsplit('/').next().unwrap_or_default().to_owned())
                .or_default()
                .push(inc);
        }
        Index {
            by_name,
            src: src.to_owned(),
        }
    }

    /// The `.c` files that reach any of `headers`, sorted; stops once
    /// more than `limit` are found.
    fn reach(&self, headers: &[String], limit: Option<usize>) -> Vec<String> {
        let mut sources = BTreeSet::new();
        for h in headers {
            sources.extend(
                self.reach_all(h, limit)
                    .into_iter()
                    .filter(|f| f.ends_with(".c")),
            );
        }
        sources.into_iter().collect()
    }

    /// Every file (headers and sources) that reaches `header`; stops once
    /// more than `limit` sources are found.
    fn reach_all(&self, header: &str, limit: Option<usize>) -> BTreeSet<String> {
        let exists = |p: &str| self.src.join(p).is_file();
        let mut reached = BTreeSet::new();
        let mut queue = vec![header.to_owned()];
        let mut sources = 0;
        while let Some(h) = queue.pop() {
            let name = h.rsplit('/').next().unwrap_or_default();
            for inc in self.by_name.get(name).into_iter().flatten() {
                if reached.contains(&inc.file) || !reaches(inc, &h, &exists) {
                    continue;
                }
                reached.insert(inc.file.clone());
                match inc.file.ends_with(".h") {
                    true => queue.push(inc.file.clone()),
                    false => sources += 1,
                }
                if limit.is_some_and(|l| sources > l) {
                    return reached;
                }
            }
        }
        reached
    }
}

/// Whether `inc` names `header`.
fn reaches(inc: &Include, header: &str, exists: &dyn Fn(&str) -> bool) -> bool {
    if !header.ends_with(inc.name.rsplit('/').next().unwrap_or_default()) {
        return false;
    }
    if inc.quoted {
        let dir = Path::new(&inc.file).parent().unwrap_or(Path::new(""));
        if let Some(next_to) = normalize(&dir.join(&inc.name)) {
            if exists(&next_to) {
                return next_to == header;
            }
        }
    }
    for root in ROOTS {
        let path = format!("{root}{}", inc.name);
        if exists(&path) {
            return path == header;
        }
    }
    // Found by a `-I` flag: a subsystem's flags name its own directories.
    fn area(p: &str) -> Vec<&str> {
        p.split('/').take(2).collect()
    }
    !ROOTS.iter().any(|r| header.starts_with(r)) && header.ends_with(&format!("/{}", inc.name)) && area(header) == area(&inc.file)
}

/// `a/b/../c.h` as `a/c.h`; `None` above the tree's root.
fn normalize(path: &Path) -> Option<String> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    Some(out.display().to_string())
}

/// The `#include` lines of the tree (`grep` output), made once per tree.
fn read_index(src: &Path) -> anyhow::Result<String> {
    let name = src
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let cached = paths::cache()
        .join("build")
        .join(format!("includes-{name}.txt"));
    if !cached.exists() {
        let output = Command::new("grep")
            .args(["-rHE", "--include=*.[ch]", r#"^\s*#\s*include\s*[<"]"#])
            .args([
                "--exclude-dir=Documentation",
                "--exclude-dir=tools",
                "--exclude-dir=scripts",
                "--exclude-dir=samples",
                "--exclude-dir=.git",
                ".",
            ])
            .current_dir(src)
            .output()
            .context("grep the kernel source's #include lines")?;
        ensure!(
            output.status.success(),
            "grep over {} failed: {}",
            src.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        fs::create_dir_all(cached.parent().unwrap_or(&cached))?;
        let part = cached.with_extension("part");
        fs::write(&part, &output.stdout)?;
        fs::rename(&part, &cached)?;
    }
    fs::read_to_string(&cached).with_context(|| format!("read {}", cached.display()))
}

/// `./<file>:#include <name>` lines, without other architectures' files.
fn parse(text: &str) -> Vec<Include> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((file, rest)) = line.strip_prefix("./").and_then(|l| l.split_once(':')) else {
            continue;
        };
        if file.starts_with("arch/") && !file.starts_with("arch/x86/") {
            continue;
        }
        let rest = rest.trim_start().trim_start_matches('#').trim_start();
        let Some(rest) = rest.strip_prefix("include") else {
            continue;
        };
        let rest = rest.trim_start();
        let (quoted, close) = match rest.chars().next() {
            Some('"') => (true, '"'),
            Some('<') => (false, '>'),
            _ => continue,
        };
        let Some((name, _)) = rest[1..].split_once(close) else {
            continue;
        };
        out.push(Include {
            file: file.to_owned(),
            name: name.to_owned(),
            quoted,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header is reached through the headers that include it, as the
    /// compiler would resolve each name; other architectures' files, the
    /// same name elsewhere and a bare include of a root's header do not
    /// count.
    #[test]
    fn a_header_reaches_the_files_that_include_it_through_other_headers() {
        let files = [
            "include/linux/futex.h",
            "include/linux/sched/signal.h",
            "fs/ext4/ext4.h",
            "fs/ext4/xattr.h",
            "fs/afs/internal.h",
            "drivers/gpu/drm/xe/xe_vm.h",
        ];
        let exists = |p: &str| files.contains(&p);
        let index = "./kernel/futex/core.c:#include <linux/futex.h>\n\
            ./kernel/fork.c:#include <linux/sched/signal.h>\n\
            ./include/linux/sched/signal.h:#include <linux/futex.h>\n\
            ./arch/arm/kernel/x.c:#include <linux/futex.h>\n\
            ./fs/ext4/xattr.h:#include \"ext4.h\"\n\
            ./fs/ext4/acl.c:  # include \"xattr.h\"\n\
            ./fs/ext4/super.c:#include \"ext4.h\"\n\
            ./fs/afs/super.c:#include \"internal.h\"\n\
            ./drivers/gpu/drm/xe/tests/xe_vm_test.c:#include \"xe_vm.h\"\n\
            ./drivers/gpu/drm/xe/xe_exec.c:#include \"xe_vm.h\"\n\
            ./net/mac802154/cfg.c:#include \"xe_vm.h\"\n";
        let lines = parse(index);
        assert_eq!(lines.len(), 10, "the arm file is not this kernel's");
        let reached = |header: &str| -> Vec<&str> {
            let mut found: Vec<&str> = lines
                .iter()
                .filter(|i| reaches(i, header, &exists))
                .map(|i| i.file.as_str())
                .collect();
            found.sort();
            found
        };
        assert_eq!(
            reached("include/linux/futex.h"),
            ["include/linux/sched/signal.h", "kernel/futex/core.c"]
        );
        assert_eq!(
            reached("fs/ext4/ext4.h"),
            ["fs/ext4/super.c", "fs/ext4/xattr.h"]
        );
        assert_eq!(reached("fs/ext4/xattr.h"), ["fs/ext4/acl.c"]);
        assert!(
            reached("fs/ext4/internal.h").is_empty(),
            "afs's internal.h is next to afs's file"
        );
        // Not next to the file and not in a root: a driver's -I flag, to
        // its own area's headers.
        assert_eq!(
            reached("drivers/gpu/drm/xe/xe_vm.h"),
            [
                "drivers/gpu/drm/xe/tests/xe_vm_test.c",
                "drivers/gpu/drm/xe/xe_exec.c"
            ]
        );
        assert_eq!(
            normalize(Path::new("fs/ext4/../afs/internal.h")).as_deref(),
            Some("fs/afs/internal.h")
        );
        assert_eq!(normalize(Path::new("../x.h")), None);
        // What a header's change adds, by name.
        let before = "#define FLAG_A 1\nstruct mark { int flags; };\n";
        let diff = "+++ b/x.h\n+#define FSNOTIFY_CONN_FLAG_DESTROYING 2\n+\tint flags; /* and more */\n";
        assert_eq!(added_names(before, diff).into_iter().collect::<Vec<_>>(), ["FSNOTIFY_CONN_FLAG_DESTROYING"]);
    }

    /// Changed files are built together when one includes a header another
    /// changes (an upstream fix that adds a member or a function to a header
    /// and uses it in its `.c` files); unrelated files stay apart; a header
    /// too many files include joins the files whose change uses what it
    /// adds, not every file that includes it.
    #[test]
    fn changed_files_that_include_a_changed_header_are_one_candidate() {
        let tree = std::env::temp_dir().join(format!("kmend-includers-{}", std::process::id()));
        let mut index = String::new();
        let mut add = |file: &str, includes: &[&str]| {
            let path = tree.join(file);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, "").unwrap();
            for i in includes {
                index.push_str(&format!("./{file}:#include {i}\n"));
            }
        };
        add("include/net/af_vsock.h", &[]);
        add("net/vmw_vsock/af_vsock.c", &["<net/af_vsock.h>"]);
        add("net/vmw_vsock/vmci_transport.c", &["<net/af_vsock.h>"]);
        add("net/vmw_vsock/hyperv_transport.c", &["<net/af_vsock.h>"]);
        add("kernel/exit.c", &["<linux/sched/signal.h>"]);
        add("include/linux/sched/signal.h", &[]);
        for i in 0..=LIMIT {
            add(&format!("kernel/f{i}.c"), &["<linux/sched/signal.h>"]);
        }
        add("kernel/fork.c", &["<linux/sched/signal.h>"]);
        let index = Index::new(&index, &tree);
        let changed: Vec<String> = [
            "include/linux/sched/signal.h",
            "include/net/af_vsock.h",
            "kernel/exit.c",
            "kernel/fork.c",
            "net/vmw_vsock/af_vsock.c",
            "net/vmw_vsock/vmci_transport.c",
        ]
        .map(str::to_owned)
        .to_vec();
        // kernel/fork.c's change uses what the wide header's change adds.
        let groups = index.groups(&changed, &|header, file| header == "include/linux/sched/signal.h" && file == "kernel/fork.c");
        assert_eq!(
            groups,
            [
                vec!["include/linux/sched/signal.h", "kernel/fork.c"],
                vec![
                    "include/net/af_vsock.h",
                    "net/vmw_vsock/af_vsock.c",
                    "net/vmw_vsock/vmci_transport.c"
                ],
                vec!["kernel/exit.c"],
            ]
        );
        assert_eq!(
            index
                .reach(&["include/net/af_vsock.h".to_owned()], None)
                .len(),
            3,
            "the unchanged includer is compiled too"
        );
    }
}
