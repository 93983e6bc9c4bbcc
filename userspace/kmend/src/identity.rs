//! The running kernel's identity: its release and its GNU build id.
//!
//! A patch is built against one exact kernel build, so kmend matches
//! patches on both: the release (`uname -r`) and the build id that the
//! kernel publishes in `/sys/kernel/notes` (ELF notes; the build id is the
//! note of type 3, `NT_GNU_BUILD_ID`, owned by `"GNU"`).

use std::{
    fmt,
    fs,
    io,
    path::PathBuf, //
};

use serde::{
    Deserialize,
    Serialize, //
};

use crate::paths::Paths;

/// `NT_GNU_BUILD_ID`.
const NT_GNU_BUILD_ID: u32 = 3;

/// Which kernel build a patch is for, or which one is running.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct KernelIdentity {
    /// As `uname -r` prints it.
    pub release: String,
    /// GNU build id of vmlinux, lowercase hex.
    pub build_id: String,
}

impl fmt::Display for KernelIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (build id {})", self.release, self.build_id)
    }
}

/// The running kernel's identity could not be read.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("'{path}': read failed: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("'{path}': no GNU build id note (is this a kernel's notes file?)")]
    NoBuildId { path: PathBuf },
}

impl KernelIdentity {
    /// The identity of the running kernel (under `paths`' root).
    pub fn running(paths: &Paths) -> Result<Self, IdentityError> {
        let release = release(paths)?;
        let notes_path = paths.kernel_notes();
        let notes = fs::read(&notes_path).map_err(|source| IdentityError::Read { path: notes_path.clone(), source })?;
        let build_id = gnu_build_id(&notes).ok_or(IdentityError::NoBuildId { path: notes_path })?;
        Ok(Self { release, build_id: hex::encode(build_id) })
    }
}

/// The running kernel's release: `<root>/proc/sys/kernel/osrelease`, or
/// `uname(2)` on a real root where `/proc` is not mounted.
pub fn release(paths: &Paths) -> Result<String, IdentityError> {
    let path = paths.osrelease();
    match fs::read_to_string(&path) {
        Ok(s) => Ok(s.trim().to_owned()),
        Err(e) if !paths.rooted && e.kind() == io::ErrorKind::NotFound => Ok(Uname::get().release),
        Err(source) => Err(IdentityError::Read { path, source }),
    }
}

/// Fields of `uname(2)`.
#[derive(Clone, Debug, Serialize)]
pub struct Uname {
    pub sysname: String,
    pub nodename: String,
    pub release: String,
    pub version: String,
    pub machine: String,
}

impl Uname {
    pub fn get() -> Self {
        // SAFETY: utsname is plain old data; uname fills it and cannot fail
        // with a valid pointer.
        let mut u: libc::utsname = unsafe { std::mem::zeroed() };
        // SAFETY: `u` is a valid, writable utsname.
        unsafe { libc::uname(&mut u) };
        let s = |f: &[libc::c_char]| {
            let bytes: Vec<u8> = f.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
            String::from_utf8_lossy(&bytes).into_owned()
        };
        Self {
            sysname: s(&u.sysname),
            nodename: s(&u.nodename),
            release: s(&u.release),
            version: s(&u.version),
            machine: s(&u.machine),
        }
    }
}

/// Finds the GNU build id in a sequence of ELF notes (native endian, as the
/// kernel exports them): `namesz`, `descsz`, `type`, then the name and the
/// descriptor, each padded to 4 bytes.
pub fn gnu_build_id(notes: &[u8]) -> Option<&[u8]> {
    // The kernel writes its notes in its own byte order, 4-byte aligned:
    // the `object` crate walks them.
    type Header = object::elf::FileHeader64<object::NativeEndian>;
    let mut iter = object::read::elf::NoteIterator::<Header>::new(object::NativeEndian, 4, notes).ok()?;
    while let Ok(Some(note)) = iter.next() {
        if note.n_type(object::NativeEndian) == NT_GNU_BUILD_ID && note.name() == b"GNU" && !note.desc().is_empty() {
            return Some(note.desc());
        }
    }
    None
}

/// Encodes one ELF note (the inverse of [`gnu_build_id`]'s walk); used to
/// build fake `/sys/kernel/notes` files for tests.
pub fn encode_note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(name.len() as u32).to_ne_bytes());
    out.extend_from_slice(&(desc.len() as u32).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    for part in [name, desc] {
        out.extend_from_slice(part);
        out.resize(out.len().next_multiple_of(4), 0);
    }
    out
}

/// A `/sys/kernel/notes` image holding `build_id` after another note, as
/// real kernels have (Xen and Linux notes come first on some).
pub fn fake_notes(build_id: &[u8]) -> Vec<u8> {
    let mut notes = encode_note(b"Linux\0", 0x100, &[1, 2, 3, 4, 5]);
    notes.extend(encode_note(b"GNU\0", NT_GNU_BUILD_ID, build_id));
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_build_id_after_other_notes() {
        let id = [0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10];
        let notes = fake_notes(&id);
        assert_eq!(gnu_build_id(&notes), Some(&id[..]));
    }

    #[test]
    fn ignores_other_owners_and_types() {
        // Type 3 but not owned by GNU, and GNU but of another type.
        let mut notes = encode_note(b"Xen\0", NT_GNU_BUILD_ID, &[1; 20]);
        notes.extend(encode_note(b"GNU\0", 1, &[2; 16]));
        assert_eq!(gnu_build_id(&notes), None);
        notes.extend(encode_note(b"GNU\0", NT_GNU_BUILD_ID, &[3; 20]));
        assert_eq!(gnu_build_id(&notes), Some(&[3u8; 20][..]));
    }

    #[test]
    fn survives_truncated_and_hostile_notes() {
        let notes = fake_notes(&[7; 20]);
        for len in 0..notes.len() {
            // Any prefix either has the whole note or none of it.
            let found = gnu_build_id(&notes[..len]);
            assert!(found.is_none() || found == Some(&[7u8; 20][..]), "prefix {len}");
        }
        let mut huge = Vec::new();
        huge.extend_from_slice(&u32::MAX.to_ne_bytes());
        huge.extend_from_slice(&u32::MAX.to_ne_bytes());
        huge.extend_from_slice(&3u32.to_ne_bytes());
        assert_eq!(gnu_build_id(&huge), None);
    }

    #[test]
    fn reads_identity_from_a_root() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        std::fs::create_dir_all(dir.path().join("sys/kernel")).unwrap();
        std::fs::create_dir_all(dir.path().join("proc/sys/kernel")).unwrap();
        std::fs::write(paths.kernel_notes(), fake_notes(&[0xab; 20])).unwrap();
        std::fs::write(paths.osrelease(), "7.2.13\n").unwrap();
        let id = KernelIdentity::running(&paths).unwrap();
        assert_eq!(id.release, "7.2.13");
        assert_eq!(id.build_id, "ab".repeat(20));
    }
}
