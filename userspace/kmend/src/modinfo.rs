//! Reading a patch module file: its name (which is the patch id).

use std::{
    fs,
    path::Path, //
};

use anyhow::{
    Context as _,
    bail, //
};
use object::{
    Object as _,
    ObjectSection as _, //
};

/// The `name=` of a module's `.modinfo` section.
pub fn module_name(path: &Path) -> anyhow::Result<String> {
    let data = fs::read(path).with_context(|| format!("'{}': read failed", path.display()))?;
    module_name_of(&data).with_context(|| format!("'{}': not a kernel module", path.display()))
}

/// The `name=` of a module image's `.modinfo` section.
pub fn module_name_of(data: &[u8]) -> anyhow::Result<String> {
    let file = object::File::parse(data).context("not an ELF object")?;
    let section = file.section_by_name(".modinfo").context("no .modinfo section")?;
    let info = section.data().context("unreadable .modinfo section")?;
    for entry in info.split(|&b| b == 0) {
        if let Some(name) = entry.strip_prefix(b"name=") {
            let name = std::str::from_utf8(name).context("module name is not UTF-8")?;
            crate::sys::check_id(name)?;
            return Ok(name.to_owned());
        }
    }
    bail!("no name= in .modinfo")
}
