//! The guest's initramfs: `vm-images/initramfs.txt` says what goes in, this
//! writes it as a newc cpio archive (the format the kernel unpacks).

use std::{
    collections::BTreeMap,
    fs,
    path::{
        Path,
        PathBuf, //
    },
};

use anyhow::{
    Context as _,
    anyhow, //
};

use crate::paths;

/// The manifest, relative to the repository.
const MANIFEST: &str = "vm-images/initramfs.txt";

/// One newc archive being written.
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let name = name.trim_start_matches('/');
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            1, // nlink
            0, // mtime: fixed, so the archive is reproducible
            data.len() as u32,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while self.out.len() % 4 != 0 {
            self.out.push(0);
        }
    }
}

/// Where the guest finds the modules it loads first (vm-images/init).
const BOOT_MODULE_DIR: &str = "/lib/boot-modules";

/// Writes the initramfs for `files` (build outputs by name) to `out`, with
/// `boot_modules` (in load order) under [`BOOT_MODULE_DIR`] and `extra`
/// files at their guest paths (their directories created).
pub fn write(
    files: &BTreeMap<String, PathBuf>,
    boot_modules: &[PathBuf],
    extra: &[(String, PathBuf)],
    out: &Path,
) -> anyhow::Result<()> {
    write_from(MANIFEST, files, boot_modules, extra, out)
}

/// [`write`] from another manifest (`vm-images/server-initramfs.txt`).
pub fn write_from(
    manifest_path: &str,
    files: &BTreeMap<String, PathBuf>,
    boot_modules: &[PathBuf],
    extra: &[(String, PathBuf)],
    out: &Path,
) -> anyhow::Result<()> {
    let repo = paths::repo();
    let manifest = fs::read_to_string(repo.join(manifest_path)).with_context(|| format!("read {manifest_path}"))?;
    let mut cpio = Cpio { out: Vec::new(), ino: 0 };
    for (n, line) in manifest.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        let bad = || anyhow!("{manifest_path}:{}: cannot read '{line}'", n + 1);
        let mode = u32::from_str_radix(f.get(2).ok_or_else(bad)?, 8).map_err(|_| bad())?;
        match (f[0], f.len()) {
            ("dir", 3) => cpio.entry(f[1], 0o040000 | mode, (0, 0), &[]),
            ("nod", 6) if f[3] == "c" => {
                let major = f[4].parse().map_err(|_| bad())?;
                let minor = f[5].parse().map_err(|_| bad())?;
                cpio.entry(f[1], 0o020000 | mode, (major, minor), &[]);
            }
            // `file?`: a build output only some kernels have.
            ("file?", 4) if f[3].strip_prefix('@').is_some_and(|name| !files.contains_key(name)) => {}
            ("file" | "file?", 4) => {
                let source = match f[3].strip_prefix('@') {
                    Some(name) => files
                        .get(name)
                        .cloned()
                        .ok_or_else(|| anyhow!("{manifest_path}:{}: no build output named '{name}'", n + 1))?,
                    None if f[3].starts_with('/') => PathBuf::from(f[3]),
                    None => repo.join(f[3]),
                };
                let data = fs::read(&source).with_context(|| format!("{manifest_path}:{}: read {}", n + 1, source.display()))?;
                cpio.entry(f[1], 0o100000 | mode, (0, 0), &data);
            }
            _ => return Err(bad()),
        }
    }
    cpio.entry(BOOT_MODULE_DIR, 0o040755, (0, 0), &[]);
    for (i, module) in boot_modules.iter().enumerate() {
        let name = module.file_name().and_then(|n| n.to_str()).ok_or_else(|| anyhow!("bad module path {}", module.display()))?;
        let data = fs::read(module).with_context(|| format!("read {}", module.display()))?;
        cpio.entry(&format!("{BOOT_MODULE_DIR}/{i:02}-{name}"), 0o100644, (0, 0), &data);
    }
    let mut dirs = std::collections::BTreeSet::new();
    for (guest, source) in extra {
        let parent = Path::new(guest).parent().and_then(|d| d.to_str()).filter(|d| *d != "/");
        if let Some(dir) = parent.filter(|d| dirs.insert((*d).to_owned())) {
            cpio.entry(dir, 0o040755, (0, 0), &[]);
        }
        let data = fs::read(source).with_context(|| format!("read {}", source.display()))?;
        cpio.entry(guest, 0o100644, (0, 0), &data);
    }
    cpio.entry("TRAILER!!!", 0, (0, 0), &[]);
    fs::write(out, &cpio.out).with_context(|| format!("write {}", out.display()))
}
