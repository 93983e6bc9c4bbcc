// SPDX-License-Identifier: GPL-2.0
//! The status text of `/dev/kmend` (format in docs/control-abi.md).

use core::fmt::{
    self,
    Write, //
};

use crate::{
    registry::Registry,
    ksym::Symbol,
    patch::State,
    refusal::text,
};

impl Registry {
    /// Writes the status text (format in docs/control-abi.md).
    pub(crate) fn write_status(&self, out: &mut impl Write) -> fmt::Result {
        writeln!(out, "kmend-status {}", crate::uapi::KMEND_UAPI_VERSION)?;
        let enabled = self.patches.iter().filter(|p| p.enabled()).count();
        let release = crate::kapi::release();
        writeln!(out, "kernel release={release} effective={release}{}", EffectiveSuffix(enabled))?;
        write!(out, "cves")?;
        let mut sep = ' ';
        for p in self.patches.iter().filter(|p| p.enabled()) {
            for cve in p.cves.to_bytes().split(|&c| c == b',').filter(|c| !c.is_empty()) {
                write!(out, "{sep}{}", core::str::from_utf8(cve).unwrap_or("?"))?;
                sep = ',';
            }
        }
        writeln!(out)?;
        for p in self.patches.iter() {
            let (en, pause) = match p.state {
                State::Enabled { pause_ns, .. } => (1, pause_ns),
                State::Registered => (0, 0),
            };
            writeln!(out, "patch {} enabled={} transition=0 replace={} funcs={} pause_ns={}",
                text(&p.id), en, u8::from(p.replace), p.funcs.len(), pause)?;
            for f in p.funcs.iter() {
                let state = if !p.enabled() {
                    "disabled"
                } else if f.target == 0 {
                    "pending"
                } else if self.redirects.is_active(f.target, p.serial) {
                    "active"
                } else {
                    "stacked"
                };
                writeln!(out, "func {} {} {} {} {} {}", text(&p.id), text(&f.object), text(&f.name),
                    f.sympos, state, Symbol::of(f.new_func))?;
            }
        }
        Ok(())
    }
}


/// `+kmend<N>`: the effective version shows how many patches are applied.
struct EffectiveSuffix(usize);

impl fmt::Display for EffectiveSuffix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 { Ok(()) } else { write!(f, "+kmend{}", self.0) }
    }
}
