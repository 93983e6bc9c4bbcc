//! The builder's steps on small objects made here (the same ELF shapes gcc
//! emits with `-ffunction-sections`): what counts as a change, what is
//! copied, and how references to the kernel come out. The whole pipeline
//! on real kernel objects runs in `cargo xtask vm-test` (fix_suite).

use std::collections::BTreeSet;

use object::{
    Object as _,
    ObjectSection as _,
    ObjectSymbol as _,
    RelocationFlags,
    SectionKind,
    SymbolFlags,
    SymbolKind,
    SymbolScope,
    elf,
    write::{
        Object,
        Relocation,
        StandardSegment,
        Symbol,
        SymbolId,
        SymbolSection,
    },
};

use super::{
    compare::compare,
    extract::extract,
    klp_relocs::post_link,
    symbols::{
        KernelSymbols,
        ModuleSymbols, //
    },
};

/// A function: name, scope, code, and calls (offset of the rel32, callee).
struct Func<'a> {
    name: &'a str,
    global: bool,
    code: &'a [u8],
    calls: &'a [(u64, &'a str)],
    /// Offset of a `lea str(%rip)` rel32 and the string it loads.
    string: Option<(u64, &'a str)>,
}

/// An object like gcc's: one `.text.<name>` per function, strings in a
/// mergeable section (`lead` strings before the used ones, to move them),
/// an `__mcount_loc` entry per function, undefined symbols for callees
/// it does not define.
fn object(funcs: &[Func], lead: &str) -> Vec<u8> {
    object_with(funcs, lead, false)
}

/// [`object`], and with `objtool`, what objtool adds to a module's object
/// as it compiles it: a `__pfx_` symbol per function, return sites and ORC
/// unwind entries pointing into each.
fn object_with(funcs: &[Func], lead: &str, objtool: bool) -> Vec<u8> {
    let mut o = Object::new(object::BinaryFormat::Elf, object::Architecture::X86_64, object::Endianness::Little);
    let strings = o.add_section(o.segment_name(StandardSegment::Data).to_vec(), b".rodata.str1.1".to_vec(), SectionKind::ReadOnlyString);
    let mut text = String::from(lead);
    let mut string_at = std::collections::HashMap::new();
    for f in funcs {
        if let Some((_, s)) = f.string {
            string_at.insert(s.to_owned(), text.len() as i64);
            text.push_str(s);
            text.push('\0');
        }
    }
    o.append_section_data(strings, text.as_bytes(), 1);
    let strings_sym = o.section_symbol(strings);
    let mcount = o.add_section(o.segment_name(StandardSegment::Data).to_vec(), b"__mcount_loc".to_vec(), SectionKind::ReadOnlyData);
    let mut ids: Vec<(String, SymbolId, object::write::SectionId)> = Vec::new();
    for f in funcs {
        let sec = o.add_section(o.segment_name(StandardSegment::Text).to_vec(), format!(".text.{}", f.name).into_bytes(), SectionKind::Text);
        o.append_section_data(sec, f.code, 16);
        let sym = o.add_symbol(Symbol {
            name: f.name.as_bytes().to_vec(),
            value: 0,
            size: f.code.len() as u64,
            kind: SymbolKind::Text,
            scope: if f.global { SymbolScope::Linkage } else { SymbolScope::Compilation },
            weak: false,
            section: SymbolSection::Section(sec),
            flags: SymbolFlags::None,
        });
        ids.push((f.name.to_owned(), sym, sec));
        let at = o.append_section_data(mcount, &[0; 8], 8);
        let sec_sym = o.section_symbol(sec);
        o.add_relocation(mcount, Relocation { offset: at, symbol: sec_sym, addend: 0, flags: RelocationFlags::Elf { r_type: elf::R_X86_64_64 } })
            .unwrap();
    }
    for (f, (_, _, sec)) in funcs.iter().zip(ids.clone()) {
        for &(offset, callee) in f.calls {
            let symbol = match ids.iter().find(|(n, _, _)| n == callee) {
                Some((_, s, _)) => *s,
                None => o.add_symbol(Symbol {
                    name: callee.as_bytes().to_vec(),
                    value: 0,
                    size: 0,
                    kind: SymbolKind::Unknown,
                    scope: SymbolScope::Unknown,
                    weak: false,
                    section: SymbolSection::Undefined,
                    flags: SymbolFlags::None,
                }),
            };
            o.add_relocation(sec, Relocation { offset, symbol, addend: -4, flags: RelocationFlags::Elf { r_type: elf::R_X86_64_PLT32 } }).unwrap();
        }
        if let Some((offset, s)) = f.string {
            let addend = string_at[s] - 4;
            o.add_relocation(sec, Relocation { offset, symbol: strings_sym, addend, flags: RelocationFlags::Elf { r_type: elf::R_X86_64_PC32 } })
                .unwrap();
        }
    }
    if objtool {
        let data = o.segment_name(StandardSegment::Data).to_vec();
        let returns = o.add_section(data.clone(), b".return_sites".to_vec(), SectionKind::ReadOnlyData);
        let orc_ip = o.add_section(data.clone(), b".orc_unwind_ip".to_vec(), SectionKind::ReadOnlyData);
        let orc = o.add_section(data, b".orc_unwind".to_vec(), SectionKind::ReadOnlyData);
        for (name, _, sec) in &ids {
            o.add_symbol(Symbol {
                name: format!("__pfx_{name}").into_bytes(),
                value: 0,
                size: 0,
                kind: SymbolKind::Text,
                scope: SymbolScope::Compilation,
                weak: false,
                section: SymbolSection::Section(*sec),
                flags: SymbolFlags::None,
            });
            let sec_sym = o.section_symbol(*sec);
            for site in [returns, orc_ip] {
                let at = o.append_section_data(site, &[0; 4], 4);
                let flags = RelocationFlags::Elf { r_type: elf::R_X86_64_PC32 };
                o.add_relocation(site, Relocation { offset: at, symbol: sec_sym, addend: 0, flags }).unwrap();
            }
            o.append_section_data(orc, &[0; 6], 2);
        }
    }
    o.write().unwrap()
}

// call rel32; lea rel32(%rip),%rdi; ret  (relocated bytes are zero).
const CALL_LEA: &[u8] = &[0xe8, 0, 0, 0, 0, 0x48, 0x8d, 0x3d, 0, 0, 0, 0, 0xc3];
const CALL_LEA_PATCHED: &[u8] = &[0xe8, 0, 0, 0, 0, 0x48, 0x8d, 0x3d, 0, 0, 0, 0, 0x90, 0xc3];

fn unchanged_user() -> Func<'static> {
    Func { name: "user", global: true, code: CALL_LEA, calls: &[(1, "helper")], string: Some((8, "same text")) }
}

#[test]
fn moved_strings_are_not_a_change_new_code_is() {
    let helper = Func { name: "helper", global: false, code: &[0xc3], calls: &[], string: None };
    let fixed = Func { name: "fixed", global: false, code: CALL_LEA, calls: &[(1, "helper")], string: None };
    let orig = object(&[unchanged_user(), Func { ..fixed }, Func { ..helper }], "");
    let fixed = Func { name: "fixed", global: false, code: CALL_LEA_PATCHED, calls: &[(1, "helper")], string: None };
    let new_fn = Func { name: "added", global: false, code: &[0xc3], calls: &[], string: None };
    // The patched object has an extra string first: every offset moves.
    let patched = object(&[unchanged_user(), fixed, helper, new_fn], "a new message\0");
    let changes = compare(&orig, &patched, &Default::default()).unwrap();
    assert_eq!(changes.changed.iter().collect::<Vec<_>>(), ["fixed"], "the moved string must not count as a change");
    assert_eq!(changes.added.iter().collect::<Vec<_>>(), ["added"]);
}

#[test]
fn changed_function_is_copied_and_refers_to_the_kernel() {
    let helper = Func { name: "helper", global: false, code: &[0xc3], calls: &[], string: None };
    let calls: &[(u64, &str)] = &[(1, "helper")];
    let orig_fixed = Func { name: "fixed", global: true, code: CALL_LEA, calls, string: Some((8, "msg")) };
    let orig = object(&[unchanged_user(), orig_fixed, Func { ..helper }], "");
    let calls: &[(u64, &str)] = &[(1, "helper")];
    let fixed = Func { name: "fixed", global: true, code: CALL_LEA_PATCHED, calls, string: Some((8, "msg")) };
    // Another function of the file calls an exported and a non-exported
    // kernel function; it is unchanged, so neither may appear.
    let other = Func { name: "other", global: true, code: &[0xe8, 0, 0, 0, 0, 0xc3], calls: &[(1, "not_exported")], string: None };
    let patched = object(&[unchanged_user(), fixed, helper, other], "");
    let changes = compare(&orig, &patched, &Default::default()).unwrap();
    let map = "\
ffffffff81000000 T user
ffffffff81000100 t helper
ffffffff81000200 T fixed
ffffffff81000300 T other
ffffffff81900000 t helper
ffffffff81a00000 T not_exported
";
    let kernel = KernelSymbols::parse(map, "0x0\tprintk\tvmlinux\tEXPORT_SYMBOL\t\n");
    let names: BTreeSet<String> = ["user", "fixed", "helper", "other"].map(String::from).into();
    let out = extract(&patched, &names, &Default::default(), &changes, &[], &kernel, None, "kp_x__").unwrap();
    assert_eq!(out.targets.len(), 1);
    assert_eq!((out.targets[0].name.as_str(), out.targets[0].sympos, out.targets[0].replacement.as_str()), ("fixed", 0, "kp_x__fixed"));
    // The static helper has two copies in the kernel; this object's lies
    // between its own globals (user, other): the first.
    assert_eq!(out.kernel_references.iter().collect::<Vec<_>>(), ["helper,1"]);

    let file = object::File::parse(&*out.object).unwrap();
    let sections: Vec<&str> = file.sections().filter_map(|s| s.name().ok()).collect();
    assert!(sections.contains(&".text.fixed") && sections.contains(&".rodata.str1.1"), "{sections:?}");
    assert!(!sections.iter().any(|s| *s == ".text.user" || *s == ".text.other" || *s == ".text.helper"), "{sections:?}");
    let mcount = file.section_by_name("__mcount_loc").unwrap();
    assert_eq!(mcount.size(), 8, "only the copied function's ftrace site");
    let symbols: Vec<String> = file.symbols().filter_map(|s| s.name().ok().map(str::to_owned)).collect();
    assert!(symbols.contains(&"kp_x__fixed".to_owned()) && !symbols.contains(&"fixed".to_owned()), "{symbols:?}");
    assert!(symbols.contains(&".klp.sym.vmlinux.helper,1".to_owned()), "{symbols:?}");
    assert!(!symbols.contains(&"not_exported".to_owned()), "an unused declaration would make the module loader fail: {symbols:?}");

    // After linking: the kernel-resolved reference in a livepatch section.
    let (ko, moved) = post_link(&out.object, &kernel, &Default::default(), &[]).unwrap();
    assert_eq!(moved, 1);
    let file = object::File::parse(&*ko).unwrap();
    let klp = file.section_by_name(".klp.rela.vmlinux..text.fixed").expect("livepatch relocation section");
    let object::SectionFlags::Elf { sh_flags } = klp.flags() else { panic!() };
    assert_ne!(sh_flags & 0x0010_0000, 0, "SHF_RELA_LIVEPATCH");
    let sym = file.symbols().find(|s| s.name() == Ok(".klp.sym.vmlinux.helper,1")).unwrap();
    let object::SymbolFlags::Elf { st_info: _, st_other: _ } = sym.flags() else { panic!() };
    let raw = file.section_by_name(".symtab").unwrap().data().unwrap();
    let entry = &raw[sym.index().0 * 24..][..24];
    assert_eq!(u16::from_le_bytes([entry[6], entry[7]]), 0xff20, "SHN_LIVEPATCH");

    // Against a kernel that does not have that symbol at that position,
    // the build fails, rather than the module loader at load.
    let other_kernel = KernelSymbols::parse("ffffffff81000200 T fixed\n", "");
    let err = post_link(&out.object, &other_kernel, &Default::default(), &[]).unwrap_err();
    assert!(format!("{err:#}").contains("'helper' at position 1, which the kernel does not place: it has 0 symbols"), "{err:#}");
}

#[test]
fn ambiguous_static_is_refused_not_guessed() {
    let helper = Func { name: "helper", global: false, code: &[0xc3], calls: &[], string: None };
    let calls: &[(u64, &str)] = &[(1, "helper")];
    let orig = object(&[Func { name: "fixed", global: true, code: CALL_LEA, calls, string: None }, Func { ..helper }], "");
    let patched = object(&[Func { name: "fixed", global: true, code: CALL_LEA_PATCHED, calls, string: None }, helper], "");
    let changes = compare(&orig, &patched, &Default::default()).unwrap();
    // Two static helpers and no way to tell which is this object's.
    let kernel = KernelSymbols::parse("ffffffff81000100 t helper\nffffffff81000200 T fixed\nffffffff81900000 t helper\n", "");
    let names: BTreeSet<String> = ["fixed", "helper"].map(String::from).into();
    let err = extract(&patched, &names, &Default::default(), &changes, &[], &kernel, None, "kp_x__").err().expect("must refuse");
    assert!(format!("{err:#}").contains("helper"), "{err:#}");
}

#[test]
fn callbacks_the_diff_adds_are_kept_other_additions_are_not() {
    let orig = object(&[Func { name: "fixed", global: true, code: CALL_LEA, calls: &[], string: None }], "");
    let fixed = Func { name: "fixed", global: true, code: CALL_LEA_PATCHED, calls: &[], string: None };
    // Two new global functions no changed code calls: one is a callback.
    let callback = Func { name: "kp_post_revert", global: true, code: &[0x90, 0xc3], calls: &[], string: None };
    let unused = Func { name: "unused_new", global: true, code: &[0xcc, 0xc3], calls: &[], string: None };
    let patched = object(&[fixed, callback, unused], "");
    let changes = compare(&orig, &patched, &Default::default()).unwrap();
    let kernel = KernelSymbols::parse("ffffffff81000200 T fixed\n", "");
    let names: BTreeSet<String> = ["fixed"].map(String::from).into();
    let roots = ["kp_post_revert".to_owned()];
    let out = extract(&patched, &names, &Default::default(), &changes, &roots, &kernel, None, "kp_x__").unwrap();
    assert_eq!(out.helpers, ["kp_post_revert"]);
    let file = object::File::parse(&*out.object).unwrap();
    let symbols: Vec<&str> = file.symbols().filter_map(|s| s.name().ok()).collect();
    assert!(symbols.contains(&"kp_post_revert") && !symbols.contains(&"unused_new"), "{symbols:?}");
    // Without the root, the callback is dropped like any uncalled addition.
    let out = extract(&patched, &names, &Default::default(), &changes, &[], &kernel, None, "kp_x__").unwrap();
    assert!(out.helpers.is_empty(), "{:?}", out.helpers);
}

/// A module as its package ships it: `defined` in `.text`, `init` in
/// `.init.text` (gone after its init: not in its symbol table then).
fn module_ko(defined: &[&str], init: &[&str]) -> Vec<u8> {
    let mut o = Object::new(object::BinaryFormat::Elf, object::Architecture::X86_64, object::Endianness::Little);
    let text = o.add_section(o.segment_name(StandardSegment::Text).to_vec(), b".text".to_vec(), SectionKind::Text);
    let init_text = o.add_section(o.segment_name(StandardSegment::Text).to_vec(), b".init.text".to_vec(), SectionKind::Text);
    for (names, sec) in [(defined, text), (init, init_text)] {
        for name in names {
            let value = o.append_section_data(sec, &[0xc3], 1);
            o.add_symbol(Symbol {
                name: name.as_bytes().to_vec(),
                value,
                size: 1,
                kind: SymbolKind::Text,
                scope: SymbolScope::Compilation,
                weak: false,
                section: SymbolSection::Section(sec),
                flags: SymbolFlags::None,
            });
        }
    }
    o.write().unwrap()
}

#[test]
fn module_symbols_count_what_the_module_keeps() {
    let m = ModuleSymbols::from_ko("mymod", &module_ko(&["helper", "twice", "twice"], &["setup"])).unwrap();
    assert_eq!(m.klp_name("helper").unwrap(), ".klp.sym.mymod.helper,0");
    assert!(m.sympos("twice").is_err(), "a name the module has twice is not guessed");
    assert!(!m.defines("setup") && m.sympos("setup").is_err(), "init code is freed after the module's init");
}

/// A fix to code built into a module: what the copy refers to in its own
/// object goes to that module's symbols (resolved in the module when the
/// patch loads), the kernel's to the kernel's; objtool's additions are
/// left for the patch module's own objtool run. Before, every fix in a
/// module was refused.
#[test]
fn code_of_a_module_refers_to_that_module() {
    let helper = Func { name: "helper", global: false, code: &[0xc3], calls: &[], string: None };
    let code: &[u8] = &[0xe8, 0, 0, 0, 0, 0xe8, 0, 0, 0, 0, 0xe8, 0, 0, 0, 0, 0xc3];
    let patched_code: &[u8] = &[0xe8, 0, 0, 0, 0, 0xe8, 0, 0, 0, 0, 0xe8, 0, 0, 0, 0, 0x90, 0xc3];
    let calls: &[(u64, &str)] = &[(1, "helper"), (6, "not_exported"), (11, "other_mod_export")];
    let orig = object_with(&[Func { name: "fixed", global: false, code, calls, string: None }, Func { ..helper }], "", true);
    let patched = object_with(&[Func { name: "fixed", global: false, code: patched_code, calls, string: None }, helper], "", true);
    let changes = compare(&orig, &patched, &Default::default()).unwrap();
    assert_eq!(changes.changed.iter().collect::<Vec<_>>(), ["fixed"], "objtool's prefix symbols are not functions");
    // The kernel has a 'helper' of its own: the module's is meant.
    let kernel = KernelSymbols::parse(
        "ffffffff81000100 t helper\nffffffff81a00000 T not_exported\n",
        "0x0\tother_mod_export\tothermod\tEXPORT_SYMBOL_GPL\t\n",
    );
    let module = ModuleSymbols::from_ko("mymod", &module_ko(&["fixed", "helper"], &[])).unwrap();
    let names: BTreeSet<String> = ["fixed", "helper"].map(String::from).into();
    let out = extract(&patched, &names, &Default::default(), &changes, &[], &kernel, Some(&module), "kp_x__").unwrap();
    assert_eq!(out.targets.len(), 1);
    assert_eq!((out.targets[0].object.as_str(), out.targets[0].name.as_str(), out.targets[0].sympos), ("mymod", "fixed", 0));
    assert_eq!(out.kernel_references.iter().collect::<Vec<_>>(), ["mymod:helper,0", "not_exported,0"]);
    let file = object::File::parse(&*out.object).unwrap();
    let sections: Vec<&str> = file.sections().filter_map(|s| s.name().ok()).collect();
    for gone in [".return_sites", ".orc_unwind_ip", ".orc_unwind"] {
        assert!(!sections.contains(&gone), "{gone} kept: objtool would refuse the patch module: {sections:?}");
    }
    let symbols: Vec<String> = file.symbols().filter_map(|s| s.name().ok().map(str::to_owned)).collect();
    assert!(!symbols.iter().any(|s| s.starts_with("__pfx_")), "{symbols:?}");
    assert!(symbols.contains(&".klp.sym.mymod.helper,0".to_owned()), "{symbols:?}");
    assert!(symbols.contains(&"other_mod_export".to_owned()), "another module's export is linked as usual: {symbols:?}");

    // Linked at load: both references in the section the module loader
    // applies when the patch loads.
    let (ko, moved) = post_link(&out.object, &kernel, &Default::default(), &[]).unwrap();
    assert_eq!(moved, 2);
    let file = object::File::parse(&*ko).unwrap();
    assert!(file.section_by_name(".klp.rela.vmlinux..text.fixed").is_some());
    assert!(file.section_by_name(".klp.rela.mymod..text.fixed").is_none());

    // Relocated at each load of the module: the module's reference in its
    // own section, kept in memory for kmend.ko to apply when the module
    // comes (the loader applies only the kernel's, which it must).
    let (ko, moved) = post_link(&out.object, &kernel, &Default::default(), &["mymod".to_owned()]).unwrap();
    assert_eq!(moved, 2);
    let file = object::File::parse(&*ko).unwrap();
    let relocs_of = |name: &str| -> Vec<String> {
        let section = file.section_by_name(name).unwrap_or_else(|| panic!("no {name}"));
        let data = section.data().unwrap();
        let symtab = file.section_by_name(".symtab").unwrap();
        let strtab = file.section_by_name(".strtab").unwrap().data().unwrap();
        let syms = symtab.data().unwrap();
        data.chunks(24)
            .map(|r| {
                let sym = u64::from_le_bytes(r[8..16].try_into().unwrap()) >> 32;
                let name_off = u32::from_le_bytes(syms[sym as usize * 24..][..4].try_into().unwrap()) as usize;
                let end = strtab[name_off..].iter().position(|&c| c == 0).unwrap();
                String::from_utf8_lossy(&strtab[name_off..name_off + end]).into_owned()
            })
            .collect()
    };
    assert_eq!(relocs_of(".klp.rela.mymod..text.fixed"), [".klp.sym.mymod.helper,0"]);
    assert_eq!(relocs_of(".klp.rela.vmlinux..text.fixed"), [".klp.sym.vmlinux.not_exported,0"]);
    let flags = |name: &str| match file.section_by_name(name).unwrap().flags() {
        object::SectionFlags::Elf { sh_flags } => sh_flags,
        _ => 0,
    };
    assert_ne!(flags(".klp.rela.mymod..text.fixed") & u64::from(elf::SHF_ALLOC), 0, "kept in memory for kmend.ko");
    assert_eq!(flags(".klp.rela.vmlinux..text.fixed") & u64::from(elf::SHF_ALLOC), 0, "the loader's, read from the file");
    assert_ne!(flags(".klp.rela.mymod..text.fixed") & 0x0010_0000, 0, "SHF_RELA_LIVEPATCH");
}

/// An object whose function `fixed` loads the address of `__func__.2`, a
/// constant the compiler named for it, in its own read-only section.
fn object_with_func_name(code: &[u8]) -> Vec<u8> {
    let mut o = Object::new(object::BinaryFormat::Elf, object::Architecture::X86_64, object::Endianness::Little);
    let rodata = o.add_section(o.segment_name(StandardSegment::Data).to_vec(), b".rodata.__func__.2".to_vec(), SectionKind::ReadOnlyData);
    o.append_section_data(rodata, b"fixed\0", 1);
    let name = o.add_symbol(Symbol {
        name: b"__func__.2".to_vec(),
        value: 0,
        size: 6,
        kind: SymbolKind::Data,
        scope: SymbolScope::Compilation,
        weak: false,
        section: SymbolSection::Section(rodata),
        flags: SymbolFlags::None,
    });
    let text = o.add_section(o.segment_name(StandardSegment::Text).to_vec(), b".text.fixed".to_vec(), SectionKind::Text);
    o.append_section_data(text, code, 16);
    o.add_symbol(Symbol {
        name: b"fixed".to_vec(),
        value: 0,
        size: code.len() as u64,
        kind: SymbolKind::Text,
        scope: SymbolScope::Linkage,
        weak: false,
        section: SymbolSection::Section(text),
        flags: SymbolFlags::None,
    });
    let flags = RelocationFlags::Elf { r_type: elf::R_X86_64_PC32 };
    o.add_relocation(text, Relocation { offset: 3, symbol: name, addend: -4, flags }).unwrap();
    o.write().unwrap()
}

/// The kernel has `__func__.2` many times (every file's second function
/// name constant): referring to the running kernel's would need a
/// position no rule can find. The copy takes its own: it reads the same.
/// Before, such fixes were refused ("which one is meant cannot be told").
#[test]
fn constants_the_compiler_named_are_copied_not_referenced() {
    // lea __func__.2(%rip),%rdi; ret  /  the same plus a nop.
    let orig = object_with_func_name(&[0x48, 0x8d, 0x3d, 0, 0, 0, 0, 0xc3]);
    let patched = object_with_func_name(&[0x48, 0x8d, 0x3d, 0, 0, 0, 0, 0x90, 0xc3]);
    let changes = compare(&orig, &patched, &Default::default()).unwrap();
    let map = "ffffffff81000200 T fixed\nffffffff82000000 d __func__.2\nffffffff82000100 d __func__.2\nffffffff82000200 d __func__.2\n";
    let kernel = KernelSymbols::parse(map, "");
    let names: BTreeSet<String> = ["fixed", "__func__.2"].map(String::from).into();
    let out = extract(&patched, &names, &Default::default(), &changes, &[], &kernel, None, "kp_x__").unwrap();
    assert!(out.kernel_references.is_empty(), "{:?}", out.kernel_references);
    let file = object::File::parse(&*out.object).unwrap();
    assert!(file.section_by_name(".rodata.__func__.2").is_some(), "the constant is copied");
}

/// A name a module has several times (a rate-limit state `_rs.0` per
/// file) is the copy whose neighbours in the module's symbol table are the
/// object's own symbols: the linker keeps each object's locals together.
/// Before, every such name was refused.
#[test]
fn a_modules_duplicate_is_placed_by_its_objects_neighbours() {
    let ko = module_ko(&["a_first", "_rs.0", "b_first", "c_second", "_rs.0", "d_second"], &[]);
    let m = ModuleSymbols::from_ko("mymod", &ko).unwrap();
    let second: BTreeSet<String> = ["c_second", "d_second", "_rs.0"].map(String::from).into();
    assert_eq!(m.klp_name_in("_rs.0", &second).unwrap(), ".klp.sym.mymod._rs.0,2");
    let first: BTreeSet<String> = ["a_first", "b_first"].map(String::from).into();
    assert_eq!(m.sympos_in("_rs.0", &first).unwrap(), 1);
    // Neighbours on one side only, or none: refused, not guessed.
    let one_side: BTreeSet<String> = ["b_first"].map(String::from).into();
    assert!(m.sympos_in("_rs.0", &one_side).is_err());
    assert!(m.sympos_in("_rs.0", &BTreeSet::new()).is_err());
    assert_eq!(m.sympos_in("a_first", &BTreeSet::new()).unwrap(), 0);
}

/// Compiles C source `src` with the host's C compiler as the kernel's
/// build does for a diff patch (one section per function and variable).
fn compile_c(name: &str, src: &str) -> Vec<u8> {
    compile_c_with(name, src, &[])
}

fn compile_c_with(name: &str, src: &str, flags: &[&str]) -> Vec<u8> {
    let dir = std::env::temp_dir().join(format!("kmend-static-locals-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (c, o) = (dir.join(format!("{name}.c")), dir.join(format!("{name}.o")));
    std::fs::write(&c, src).unwrap();
    let status = std::process::Command::new("cc")
        .args(["-O2", "-ffunction-sections", "-fdata-sections", "-fno-asynchronous-unwind-tables", "-fno-pic", "-c"])
        .args(flags)
        .arg(&c)
        .arg("-o")
        .arg(&o)
        .status()
        .expect("the host C compiler (cc)");
    assert!(status.success(), "cc {}", c.display());
    std::fs::read(&o).unwrap()
}

/// The numbered static variable `base.N` that `function` uses in `obj`.
fn static_of(obj: &[u8], base: &str, function: &str) -> Vec<String> {
    let file = object::File::parse(obj).unwrap();
    let section = file.section_by_name(&format!(".text.{function}")).unwrap();
    let mut out = Vec::new();
    for (_, r) in section.relocations() {
        let object::RelocationTarget::Symbol(i) = r.target() else { continue };
        let sym = file.symbol_by_index(i).unwrap();
        let Some(ix) = sym.section_index() else { continue };
        let var = file.symbols().find(|s| s.section_index() == Some(ix) && s.kind() == SymbolKind::Data);
        if let Some(name) = var.and_then(|v| v.name().ok().map(str::to_owned))
            && name.starts_with(&format!("{base}."))
            && !out.contains(&name)
        {
            out.push(name);
        }
    }
    out
}

/// The compiler numbers a file's function-scope statics with one counter
/// (`count.0`, `count.3`), so a fix that adds one renumbers others: a copy
/// that trusted the number would use another function's variable in the
/// running kernel, and unchanged functions would look changed. They are
/// matched by the functions that use them. Before, `first` counted as
/// changed, and the copy of `second` used the kernel's variable of the
/// patched object's number: `first`'s.
#[test]
fn static_variables_are_matched_by_their_function_not_their_number() {
    let before = "int g(int);\n\
        int first(int x) { static int count; count += x; return g(count); }\n\
        int second(int x) { static int count; count -= x; return g(count); }\n\
        int middle(int x) { static int count; count ^= x; return g(count); }\n\
        int last(int x) { static int count; count |= x; return g(count); }\n";
    // The fix adds a static to `middle` and changes `second`.
    let after = "int g(int);\n\
        int first(int x) { static int count; count += x; return g(count); }\n\
        int second(int x) { static int count; count -= x; if (count < 0) count = 0; return g(count); }\n\
        int middle(int x) { static int count; static int calls; calls++; count ^= x; return g(count + calls); }\n\
        int last(int x) { static int count; count |= x; return g(count); }\n";
    let (orig, patched) = (compile_c("before", before), compile_c("after", after));
    let count = |obj: &[u8], f: &str| static_of(obj, "count", f).pop().unwrap();
    let (o_first, o_second) = (count(&orig, "first"), count(&orig, "second"));
    let p_second = count(&patched, "second");
    assert_ne!(o_second, p_second, "the compiler did not renumber: nothing to test");

    let statics = super::static_locals::correlate(&orig, &patched).unwrap();
    use super::static_locals::Match;
    assert_eq!(statics.get(&count(&patched, "first")), Some(&Match::Orig(o_first.clone())));
    assert_eq!(statics.get(&p_second), Some(&Match::Orig(o_second.clone())));
    assert_eq!(statics.get(&static_of(&patched, "calls", "middle")[0]), Some(&Match::New));

    let changes = compare(&orig, &patched, &statics).unwrap();
    assert_eq!(changes.changed.iter().collect::<Vec<_>>(), ["middle", "second"], "a renumbered variable is no change");

    // Each `count` once in the kernel, by the original's names.
    let mut map = String::from("ffffffff81000000 T first\nffffffff81000100 T second\nffffffff81000200 T middle\nffffffff81000300 T last\n");
    for (i, f) in ["first", "second", "middle", "last"].iter().enumerate() {
        map.push_str(&format!("ffffffff8200{i}000 b {}\n", count(&orig, f)));
    }
    let kernel = KernelSymbols::parse(&map, "0x0\tg\tvmlinux\tEXPORT_SYMBOL\t\n");
    let names = super::defined_names(&orig).unwrap();
    let out = extract(&patched, &names, &statics, &changes, &[], &kernel, None, "kp_x__").unwrap();
    let refs: Vec<&str> = out.kernel_references.iter().map(String::as_str).collect();
    assert!(refs.contains(&format!("{o_second},0").as_str()), "second's copy uses the kernel's count of second ({o_second}): {refs:?}");
    assert!(!refs.contains(&format!("{o_first},0").as_str()), "never first's ({o_first}): {refs:?}");
    assert!(!refs.iter().any(|r| r.starts_with("calls")), "the new variable is the copy's own: {refs:?}");

    // A function whose statics of one name change in number cannot be
    // matched: refused with the reason, not guessed.
    let more = "int g(int);\n\
        int first(int x) { static int count; count += x; return g(count); }\n\
        int middle(int x) { static int count; count ^= x; return g(count); }\n\
        int last(int x) { static int count; count -= x; if (x) { static int count; count++; x += count; } return g(count + x); }\n";
    let patched = compile_c("more", more);
    let statics = super::static_locals::correlate(&orig, &patched).unwrap();
    let changes = compare(&orig, &patched, &statics).unwrap();
    let err = extract(&patched, &names, &statics, &changes, &[], &kernel, None, "kp_x__").err().expect("must refuse");
    assert!(format!("{err:#}").contains("'last' has 1 static 'count' variables before the fix and 2 after"), "{err:#}");
}

/// kbuild compiles a file the config does not build when asked to: such a
/// file is told by its functions missing from the kernel's symbols. A
/// driver with only `static` functions (dm-ebs-target.c's `ebs_dtr`) was
/// judged by its global ones, of which it has none, so it went on and was
/// refused later for an "unplaceable" symbol (18 of the survey's files)
/// or reported as "no code change" (11). Now its static ones decide.
#[test]
fn a_file_the_config_does_not_build_is_told_by_its_functions() {
    let statics = object(&[Func { name: "ebs_dtr", global: false, code: &[0xc3], calls: &[], string: None }], "");
    let globals = object(&[Func { name: "exported_one", global: true, code: &[0xc3], calls: &[], string: None }, Func { name: "ebs_dtr", global: false, code: &[0xc3], calls: &[], string: None }], "");
    let without = KernelSymbols::parse("ffffffff81000000 T _text\n", "");
    let with = KernelSymbols::parse("ffffffff81000000 T _text\nffffffff81000100 t ebs_dtr\nffffffff81000200 T exported_one\n", "");
    assert!(!super::in_kernel(&statics, &without).unwrap(), "only static functions, none in the kernel: not built in");
    assert!(super::in_kernel(&statics, &with).unwrap());
    assert!(!super::in_kernel(&globals, &without).unwrap());
    assert!(super::in_kernel(&globals, &with).unwrap());
    let empty = object(&[], "");
    assert!(super::in_kernel(&empty, &without).unwrap(), "no function to tell by");
}

/// A fix that adds a member to a struct the running kernel already has
/// objects of cannot be applied by copying functions: the copy would use
/// the new offsets on objects of the old layout. The builder used to copy
/// `get` and build the patch (the layout was never looked at); now it
/// refuses with the type and the member. Nested anonymous structs, as the
/// kernel's, count as their parent's members; a fix that keeps every
/// layout passes.
#[test]
fn a_fix_that_changes_a_structs_layout_is_refused_with_the_member() {
    let before = "struct conn { int id; struct { long seq; int flags; }; int refs; };\n\
        union key { int a; long b; };\n\
        int get(struct conn *c, union key *k) { return c->refs + c->flags + k->a; }\n";
    let added = "struct conn { int id; struct { long seq; int flags; int gen; }; int refs; };\n\
        union key { int a; long b; };\n\
        int get(struct conn *c, union key *k) { return c->refs + c->flags + k->a + c->gen; }\n";
    let same = "struct conn { int id; struct { long seq; int flags; }; int refs; };\n\
        union key { int a; long b; };\n\
        int get(struct conn *c, union key *k) { return c->refs - c->flags + k->a; }\n";
    let g = ["-g"];
    let orig = compile_c_with("layout_before", before, &g);
    let (with_gen, kept) = (compile_c_with("layout_added", added, &g), compile_c_with("layout_same", same, &g));

    let layouts = super::layouts::layouts(&orig).unwrap();
    let conn = &layouts["struct conn"];
    let names: Vec<&str> = conn.members.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["id", "<anonymous 16>", "seq", "flags", "refs"], "{conn:?}");
    assert_eq!(conn.members[4].1, 24 * 8, "refs after the nested struct: {conn:?}");
    assert!(layouts.contains_key("union key"), "{layouts:?}");

    // Without the check the builder goes on: `get` changed, and is copied.
    let statics = super::static_locals::correlate(&orig, &with_gen).unwrap();
    assert!(compare(&orig, &with_gen, &statics).unwrap().changed.contains("get"));
    let err = super::refuse_layout_changes("net/conn.c", &orig, &with_gen).err().expect("a changed layout must be refused");
    let err = format!("{err:#}");
    assert!(err.contains("changes the data layout of struct conn (member gen added at byte 20)"), "{err}");
    assert!(err.contains("shadow variable"), "{err}");
    super::refuse_layout_changes("net/conn.c", &orig, &kept).expect("the same layouts pass");
    // A variable of an anonymous struct is known by the variable.
    let state = "static struct { int lock; int count; } state;\nint bump(void) { return ++state.count; }\n";
    let grown = "static struct { int lock; int count; int max; } state;\nint bump(void) { return state.count < state.max ? ++state.count : 0; }\n";
    let err = super::refuse_layout_changes("x.c", &compile_c_with("anon_before", state, &g), &compile_c_with("anon_after", grown, &g)).err().expect("refused");
    assert!(format!("{err:#}").contains("the anonymous type of state (member max added at byte 8)"), "{err:#}");
    // Without DWARF there is nothing to compare, and nothing is refused.
    super::refuse_layout_changes("net/conn.c", &compile_c("nodebug", before), &compile_c("nodebug2", same)).unwrap();
}

/// An upstream fix often adds a helper in one file, declares it in a
/// header, and calls it from other files (vsock's `vsock_check_source`,
/// called by the transports). The copy in the calling file referred to a
/// symbol the running kernel does not have, and the build was refused
/// ("not in the kernel's symbol table"). Now the helper is kept by its
/// name in the defining file's copy and the caller's reference is linked
/// inside the patch module.
#[test]
fn a_helper_one_file_adds_and_another_calls_is_linked_inside_the_patch() {
    let defines = compile_c("defines_before", "int a(int x) { return x + 1; }\n");
    let defines_new = compile_c("defines_after", "int helper_new(int x) { return x * 3; }\nint a(int x) { return x + 2; }\n");
    let calls = compile_c("calls_before", "int g(int);\nint b(int x) { return g(x); }\n");
    let calls_new = compile_c("calls_after", "int g(int);\nint helper_new(int);\nint b(int x) { return g(helper_new(x)); }\n");
    let none = Default::default();
    let d = compare(&defines, &defines_new, &none).unwrap();
    let c = compare(&calls, &calls_new, &none).unwrap();
    assert!(d.added.contains("helper_new") && c.changed.contains("b"));

    let roots = super::called_across(&[(&defines_new, &d), (&calls_new, &c)]).unwrap();
    assert_eq!(roots, ["helper_new"]);
    let kernel = KernelSymbols::parse("ffffffff81000000 T a\nffffffff81000100 T b\n", "0x0\tg\tvmlinux\tEXPORT_SYMBOL\t\n");
    let caller = |roots: &[String]| extract(&calls_new, &super::defined_names(&calls).unwrap(), &none, &c, roots, &kernel, None, "kp_x__");
    let err = caller(&[]).err().expect("without the root, the helper is looked for in the kernel");
    assert!(format!("{err:#}").contains("helper_new"), "{err:#}");
    let out = caller(&roots).unwrap();
    assert!(out.kernel_references.is_empty(), "linked in the patch, not by the kernel: {:?}", out.kernel_references);
    let file = object::File::parse(&*out.object).unwrap();
    assert!(file.symbols().any(|s| s.is_undefined() && s.name() == Ok("helper_new")), "the caller's copy refers to it by name");
    let definer = extract(&defines_new, &super::defined_names(&defines).unwrap(), &none, &d, &roots, &kernel, None, "kp_x__").unwrap();
    assert!(definer.helpers.contains(&"helper_new".to_owned()), "{:?}", definer.helpers);
    let file = object::File::parse(&*definer.object).unwrap();
    assert!(file.symbols().any(|s| s.is_global() && s.section_index().is_some() && s.name() == Ok("helper_new")), "kept by its name, global");
}
