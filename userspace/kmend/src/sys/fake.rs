//! The test-double kernel: state in files under `$KMEND_ROOT/fake-kernel`.
//!
//! It exists because a host cannot load kernel modules, yet the agent's
//! host tests must run the real `kmend` binary end to end. It reproduces
//! what kmend.ko shows userspace (docs/control-abi.md): the status text
//! format, `active`/`stacked` functions, and the errnos of the real calls
//! (`EEXIST` for a loaded module, `ENOENT` for an unknown patch). Loading a
//! patch module checks that the file is an ELF object whose `.modinfo` name
//! is the patch id, then adds the patch with the functions of its artifact
//! manifest; `revert` removes the patch, `unload` the module.
//!
//! "kmend.ko is loaded" means `$KMEND_ROOT/dev/kmend` exists. Knobs for
//! tests: `KMEND_FAKE_LOAD_DELAY=<duration>` sleeps inside load (to kill
//! kmend mid-apply), `KMEND_FAKE_LOAD_FAIL=<id>` refuses to load `<id>`
//! with `EINVAL`. `kmend verify` on the double proves every function at
//! once (one replacement hit, no old-body hit) unless
//! `KMEND_FAKE_OLD_BODY_RUNS=<id>` says the old body of patch `<id>` still
//! runs (host tests of what the agent and the fleet do with a failed
//! proof; eBPF cannot run there). Every module counts as loaded but those
//! `KMEND_FAKE_UNLOADED=<m1,m2>` names (the refusal of a patch linked to a
//! module that is not loaded). The real kernel path, eBPF included, is
//! proven by the VM suite.

use std::{
    fs,
    io,
    path::{
        Path,
        PathBuf, //
    },
};

use serde::{
    Deserialize,
    Serialize, //
};

use super::{
    SysError,
    errno_hint, //
};
use crate::{
    target::Function,
    paths::Paths,
};

#[derive(Default, Serialize, Deserialize)]
struct FakeState {
    modules: Vec<String>,
    patches: Vec<FakePatch>,
}

#[derive(Serialize, Deserialize)]
struct FakePatch {
    id: String,
    functions: Vec<Function>,
}

/// The test double (see the module docs).
pub struct FakeKernel {
    control: PathBuf,
    state: PathBuf,
}

fn errno(op: &'static str, id: &str, code: i32) -> SysError {
    let source = io::Error::from_raw_os_error(code);
    SysError::Patch { op, id: id.to_owned(), hint: errno_hint(&source), source }
}

impl FakeKernel {
    /// Whether module `name` is loaded: yes, unless `KMEND_FAKE_UNLOADED`
    /// names it (see the module docs).
    pub fn module_loaded(&self, name: &str) -> bool {
        std::env::var("KMEND_FAKE_UNLOADED").map_or(true, |v| !v.split(',').any(|m| m == name))
    }

    pub fn new(paths: &Paths) -> Self {
        Self { control: paths.control_device(), state: paths.fake_kernel_dir().join("state.json") }
    }

    /// What `kmend verify` sees on the double (see the module docs).
    pub fn proof(&self, patch: &crate::status::PatchStatus) -> crate::verify::PatchProof {
        let old_runs = std::env::var("KMEND_FAKE_OLD_BODY_RUNS").is_ok_and(|v| v == patch.id);
        let functions: Vec<crate::verify::FunctionProof> = patch
            .functions
            .iter()
            .map(|f| crate::verify::FunctionProof {
                function: f.name.clone(),
                replacement: format!("{}+0x0", f.replacement_symbol()),
                replacement_hits: 1,
                old_body: format!("{}+0x5", f.name),
                old_body_hits: u64::from(old_runs),
                proven: !old_runs,
            })
            .collect();
        crate::verify::PatchProof { patch: patch.id.clone(), proven: !old_runs && !functions.is_empty(), functions }
    }

    fn fail(&self, what: String) -> SysError {
        SysError::Fake { path: self.state.clone(), what }
    }

    fn load(&self) -> Result<FakeState, SysError> {
        if !self.control.exists() {
            return Err(SysError::CoreNotLoaded(self.control.clone()));
        }
        match fs::read(&self.state) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| self.fail(format!("corrupt state: {e}"))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(FakeState::default()),
            Err(e) => Err(self.fail(format!("read failed: {e}"))),
        }
    }

    fn save(&self, state: &FakeState) -> Result<(), SysError> {
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| self.fail(e.to_string()))?;
        crate::fsutil::write_atomic(&self.state, &bytes).map_err(|e| self.fail(format!("write failed: {e}")))
    }

    pub fn load_module(&self, path: &Path, id: &str, functions: &[Function]) -> Result<(), SysError> {
        let mut state = self.load()?;
        let data = fs::read(path).map_err(|source| SysError::Io { op: "open", path: path.to_owned(), source })?;
        // What finit_module would refuse: not an ELF module (ENOEXEC).
        let name = crate::modinfo::module_name_of(&data).map_err(|_| errno("load", id, libc::ENOEXEC))?;
        if state.modules.contains(&name) {
            return Err(errno("load", id, libc::EEXIST));
        }
        if let Ok(delay) = std::env::var("KMEND_FAKE_LOAD_DELAY") {
            let d = crate::duration::parse(&delay).map_err(|e| self.fail(e.to_string()))?;
            std::thread::sleep(d);
        }
        if std::env::var("KMEND_FAKE_LOAD_FAIL").is_ok_and(|v| v == name) {
            return Err(errno("load", id, libc::EINVAL));
        }
        state.modules.push(name.clone());
        state.patches.push(FakePatch { id: name, functions: functions.to_vec() });
        self.save(&state)
    }

    /// Loading kmend.ko: the control device appears. The module must be
    /// an ELF module named kmend (what finit_module and the name in its
    /// .modinfo would decide); `KMEND_FAKE_LOAD_FAIL=kmend` refuses it.
    pub fn load_core(&self, path: &Path) -> Result<(), SysError> {
        let id = crate::artifact::CORE_ID;
        let data = fs::read(path).map_err(|source| SysError::Io { op: "open", path: path.to_owned(), source })?;
        let name = crate::modinfo::module_name_of(&data).map_err(|_| errno("load", id, libc::ENOEXEC))?;
        if name != id {
            return Err(self.fail(format!("core module is named '{name}', not '{id}'")));
        }
        if self.control.exists() {
            return Err(errno("load", id, libc::EEXIST));
        }
        if std::env::var("KMEND_FAKE_LOAD_FAIL").is_ok_and(|v| v == id) {
            return Err(errno("load", id, libc::EINVAL));
        }
        if let Some(dir) = self.control.parent() {
            fs::create_dir_all(dir).map_err(|e| self.fail(format!("create {}: {e}", dir.display())))?;
        }
        fs::write(&self.control, b"").map_err(|e| self.fail(format!("create {}: {e}", self.control.display())))
    }

    pub fn core_loaded(&self) -> bool {
        self.control.exists()
    }

    pub fn unload_module(&self, name: &str) -> Result<(), SysError> {
        let mut state = self.load()?;
        if state.patches.iter().any(|p| p.id == name) {
            return Err(errno("unload module", name, libc::EBUSY));
        }
        let before = state.modules.len();
        state.modules.retain(|m| m != name);
        if state.modules.len() == before {
            return Err(errno("unload module", name, libc::ENOENT));
        }
        self.save(&state)
    }

    pub fn revert(&self, id: &str) -> Result<(), SysError> {
        let mut state = self.load()?;
        let before = state.patches.len();
        state.patches.retain(|p| p.id != id);
        if state.patches.len() == before {
            return Err(errno("revert", id, libc::ENOENT));
        }
        self.save(&state)
    }

    /// The status text, in kmend.ko's format.
    pub fn read_status(&self) -> Result<String, SysError> {
        let state = self.load()?;
        let mut out = String::from("kmend-status 1\n");
        for (i, p) in state.patches.iter().enumerate() {
            out += &format!("patch {} enabled=1 transition=0 replace=0 funcs={}\n", p.id, p.functions.len());
            for f in &p.functions {
                let newer = state.patches[i + 1..]
                    .iter()
                    .any(|q| q.functions.iter().any(|g| (&g.object, &g.name, g.sympos) == (&f.object, &f.name, f.sympos)));
                let st = if newer { "stacked" } else { "active" };
                out += &format!(
                    "func {} {} {} {} {st} {}+0x0/0x40 [{}]\n",
                    p.id, f.object, f.name, f.sympos, f.replacement, p.id
                );
            }
        }
        Ok(out)
    }
}
