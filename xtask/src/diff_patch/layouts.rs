//! The layout of every struct and union an object uses, from its DWARF,
//! before and after the fix.
//!
//! A fix that changes a type's layout (a member added, removed, moved or
//! resized) cannot be live patched by copying functions: the running kernel
//! already holds objects of the old layout, allocated and used by code the
//! patch does not replace, and the copied code would read and write them as
//! the new one (past their end, or the wrong member). kpatch and the
//! kernel's livepatch leave this to the patch author; the builder refuses
//! it with the type and the member, so that the author can rewrite the fix
//! with a shadow variable (docs/patch-format.md). A type the compiler emits
//! in only one of the two objects is not compared: the code of the other
//! does not use it.
//!
//! The objects are relocatable: their `.debug_*` sections refer to each
//! other through relocations, which `object`'s relocation map applies as
//! gimli reads them.

use std::{
    collections::{
        BTreeMap,
        HashMap, //
    },
};

use anyhow::{
    Context as _,
    anyhow, //
};
use gimli::{
    EndianSlice,
    LittleEndian,
    RelocateReader,
    Unit,
    UnitOffset, //
};
use object::{
    Object as _,
    ObjectSection as _, //
};

/// A type's layout: its size and its members (nested anonymous structs and
/// unions flattened into their parent), each at its offset in bits.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Layout {
    pub(super) size: u64,
    pub(super) members: Vec<(String, u64)>,
}

/// What a fix changes in the layout of a type both objects use.
#[derive(Debug)]
pub(super) struct Changed {
    /// `struct <name>` or `union <name>`.
    pub(super) name: String,
    /// What differs, e.g. "member s_rcu added at byte 1208".
    pub(super) how: String,
}

/// The named structs and unions `data` (a relocatable ELF object with
/// DWARF) defines, by `struct <name>` / `union <name>`, and the anonymous
/// ones of its variables, by `the anonymous type of <variable>`. No
/// DWARF: none.
pub(super) fn layouts(data: &[u8]) -> anyhow::Result<BTreeMap<String, Layout>> {
    let file = object::File::parse(data)?;
    let mut sections: HashMap<&'static str, (&[u8], object::RelocationMap)> = HashMap::new();
    use gimli::SectionId as S;
    // What a unit's header and attributes refer to (gimli reads the line
    // program of each unit it opens).
    for id in [S::DebugInfo, S::DebugAbbrev, S::DebugStr, S::DebugStrOffsets, S::DebugLineStr, S::DebugLine, S::DebugAddr, S::DebugRngLists, S::DebugLocLists] {
        if let Some(section) = file.section_by_name(id.name()) {
            let bytes = section.data().with_context(|| format!("read {}", id.name()))?;
            let map = section.relocation_map().map_err(|e| anyhow!("{}: {e}", id.name()))?;
            sections.insert(id.name(), (bytes, map));
        }
    }
    let empty = object::RelocationMap::default();
    let dwarf = gimli::Dwarf::load(|id| -> Result<Reader, gimli::Error> {
        let (bytes, map) = sections.get(id.name()).map_or((&[][..], &empty), |(b, m)| (*b, m));
        Ok(RelocateReader::new(EndianSlice::new(bytes, LittleEndian), Relocations(map)))
    })?;
    let mut out = BTreeMap::new();
    let mut units = dwarf.units();
    while let Some(header) = units.next()? {
        let unit = dwarf.unit(header)?;
        let mut entries = unit.entries();
        while let Some((_, entry)) = entries.next_dfs()? {
            // A variable of an anonymous struct (`static struct { ... } x;`)
            // is known by the variable.
            if entry.tag() == gimli::DW_TAG_variable
                && let Some(var) = name_of(&dwarf, &unit, entry)?
                && let Some(gimli::AttributeValue::UnitRef(ty)) = entry.attr_value(gimli::DW_AT_type)?
            {
                let t = unit.entry(ty)?;
                if matches!(t.tag(), gimli::DW_TAG_structure_type | gimli::DW_TAG_union_type) && name_of(&dwarf, &unit, &t)?.is_none() {
                    let size = t.attr_value(gimli::DW_AT_byte_size)?.and_then(|v| v.udata_value()).unwrap_or(0);
                    let mut members = Vec::new();
                    members_of(&dwarf, &unit, ty, "", 0, &mut members, 0)?;
                    out.insert(format!("the anonymous type of {var}"), Layout { size, members });
                }
                continue;
            }
            let kind = match entry.tag() {
                gimli::DW_TAG_structure_type => "struct",
                gimli::DW_TAG_union_type => "union",
                _ => continue,
            };
            if entry.attr(gimli::DW_AT_declaration)?.is_some() {
                continue;
            }
            let (Some(name), Some(size)) = (name_of(&dwarf, &unit, entry)?, entry.attr_value(gimli::DW_AT_byte_size)?.and_then(|v| v.udata_value()))
            else {
                continue;
            };
            let mut members = Vec::new();
            members_of(&dwarf, &unit, entry.offset(), "", 0, &mut members, 0)?;
            out.insert(format!("{kind} {name}"), Layout { size, members });
        }
    }
    Ok(out)
}

/// The types whose layout differs between `orig` and `patched`.
pub(super) fn changed(orig: &[u8], patched: &[u8]) -> anyhow::Result<Vec<Changed>> {
    let (before, after) = (layouts(orig).context("the original object's types")?, layouts(patched).context("the patched object's types")?);
    let mut out = Vec::new();
    for (name, old) in &before {
        let Some(new) = after.get(name) else { continue };
        if old == new {
            continue;
        }
        out.push(Changed { name: name.clone(), how: difference(old, new) });
    }
    Ok(out)
}

/// The first difference between two layouts of a type, in words.
fn difference(old: &Layout, new: &Layout) -> String {
    let at = |bits: u64| match bits % 8 {
        0 => format!("byte {}", bits / 8),
        b => format!("byte {} bit {b}", bits / 8),
    };
    let find = |list: &[(String, u64)], name: &str| list.iter().find(|(n, _)| n == name).map(|(_, o)| *o);
    for (name, offset) in new.members.iter().filter(|(n, _)| !n.starts_with('<')) {
        match find(&old.members, name) {
            None => return format!("member {name} added at {}", at(*offset)),
            Some(was) if was != *offset => return format!("member {name} moved from {} to {}", at(was), at(*offset)),
            Some(_) => {}
        }
    }
    if let Some((name, _)) = old.members.iter().find(|(n, _)| find(&new.members, n).is_none()) {
        return format!("member {name} removed");
    }
    match old.size == new.size {
        true => "a member's size or order changed".to_owned(),
        false => format!("size {} -> {} bytes", old.size, new.size),
    }
}

/// The reader gimli parses with: the section's bytes, relocated.
type Reader<'a> = RelocateReader<EndianSlice<'a, LittleEndian>, Relocations<'a>>;

/// One section's relocations, applied to the offsets and addresses read.
#[derive(Clone, Copy, Debug)]
struct Relocations<'a>(&'a object::RelocationMap);

impl gimli::read::Relocate<usize> for Relocations<'_> {
    fn relocate_address(&self, offset: usize, value: u64) -> gimli::Result<u64> {
        Ok(self.0.relocate(offset as u64, value))
    }

    fn relocate_offset(&self, offset: usize, value: usize) -> gimli::Result<usize> {
        <usize as gimli::ReaderOffset>::from_u64(self.0.relocate(offset as u64, value as u64))
    }
}

fn name_of<'a>(dwarf: &gimli::Dwarf<Reader<'a>>, unit: &Unit<Reader<'a>>, entry: &gimli::DebuggingInformationEntry<Reader<'a>>) -> anyhow::Result<Option<String>> {
    let Some(value) = entry.attr_value(gimli::DW_AT_name)? else { return Ok(None) };
    let name = dwarf.attr_string(unit, value)?;
    Ok(Some(gimli::Reader::to_string_lossy(&name)?.into_owned()))
}

/// Appends the members of the type at `offset`, `base` bits into the
/// outermost one; an anonymous struct or union member is flattened.
fn members_of<'a>(
    dwarf: &gimli::Dwarf<Reader<'a>>,
    unit: &Unit<Reader<'a>>,
    offset: UnitOffset,
    prefix: &str,
    base: u64,
    out: &mut Vec<(String, u64)>,
    depth: u32,
) -> anyhow::Result<()> {
    let mut tree = unit.entries_tree(Some(offset))?;
    let mut children = tree.root()?.children();
    while let Some(child) = children.next()? {
        let member = child.entry();
        if member.tag() != gimli::DW_TAG_member {
            continue;
        }
        let bytes = member.attr_value(gimli::DW_AT_data_member_location)?.and_then(|v| v.udata_value()).unwrap_or(0);
        let bits = member.attr_value(gimli::DW_AT_data_bit_offset)?.and_then(|v| v.udata_value()).unwrap_or(0);
        let at = base + bytes * 8 + bits;
        let size = member.attr_value(gimli::DW_AT_bit_size)?.and_then(|v| v.udata_value());
        match name_of(dwarf, unit, member)? {
            Some(name) => {
                // A bit-field's width is part of the layout.
                let name = size.map_or_else(|| format!("{prefix}{name}"), |w| format!("{prefix}{name}:{w}"));
                out.push((name, at));
            }
            None if depth < 16 => {
                let Some(gimli::AttributeValue::UnitRef(ty)) = member.attr_value(gimli::DW_AT_type)? else { continue };
                // An anonymous member's type is an anonymous struct or union:
                // its members are the parent's.
                let nested = unit.entry(ty)?;
                let size = nested.attr_value(gimli::DW_AT_byte_size)?.and_then(|v| v.udata_value()).unwrap_or(0);
                out.push((format!("{prefix}<anonymous {size}>"), at));
                members_of(dwarf, unit, ty, prefix, at, out, depth + 1)?;
            }
            None => {}
        }
    }
    Ok(())
}
