//! `kmend status`: what is applied, per patch and function.

use kmend::{
    exit::Exit,
    status::KernelStatus,
    sys, //
};

pub fn run(json: bool) -> anyhow::Result<Exit> {
    let status = KernelStatus::parse(&sys::read_status()?)?;
    if json {
        super::print_json(&status)?;
    } else if status.patches.is_empty() {
        println!("no patches applied");
    } else {
        println!("{} patch(es) applied", status.patches.len());
        for p in &status.patches {
            let flags = if p.replace { " (replace)" } else { "" };
            println!("  {}{flags}: enabled={} transition={}", p.id, u8::from(p.enabled), u8::from(p.transition));
            for f in &p.functions {
                println!("    {}:{} -> {} [{}]", f.object, f.name, f.replacement, f.state);
            }
        }
    }
    Ok(if status.patches.is_empty() { Exit::NotApplied } else { Exit::Ok })
}
