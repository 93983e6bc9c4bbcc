//! What a change to a header can do to code that does not use what it adds.
//!
//! A fix to a header that hundreds of files include cannot have all of them
//! compiled and compared (`klp-build` rebuilds the kernel for it). Many
//! such changes only add names: a new macro, a new inline helper or
//! prototype, a new member of a struct. Code that does not name them
//! compiles to the same bytes, so only the files of the diff, which use
//! them, need comparing; a new member still changes the struct's layout,
//! which the layout check refuses in any compiled object that uses the
//! type (layouts.rs). Anything else (a changed or removed line, a line
//! added inside an existing function, an enumerator inserted before
//! others, an `#include`, a conditional) may change every includer's code,
//! and the header stays refused.

/// Whether the header change from `old` to `new` only adds names (see the
/// module's documentation). A line of `new` counts as added when the
/// longest common subsequence of both files' lines leaves it out; each run
/// of added lines is judged by where it stands: a `#define` of a new name
/// anywhere, a whole declaration or definition between two others at the
/// top level, lines in a struct or union, or enumerators after the last
/// existing one.
pub fn only_adds_names(old: &str, new: &str) -> bool {
    let (old_lines, new_lines): (Vec<&str>, Vec<&str>) = (old.lines().collect(), new.lines().collect());
    let Some(added) = added_lines(&old_lines, &new_lines) else { return false };
    let lines = scan(&new_lines);
    let mut i = 0;
    while i < lines.len() {
        if !added[i] || lines[i].blank {
            i += 1;
            continue;
        }
        // A run of added lines, blank ones included.
        let start = i;
        while i < lines.len() && (added[i] || lines[i].blank) {
            i += 1;
        }
        let code: Vec<usize> = (start..i).filter(|j| !lines[*j].blank).collect();
        if !code.iter().filter(|j| lines[**j].directive_start).all(|j| is_new_define(new_lines[*j], old)) {
            return false;
        }
        if code.iter().all(|j| lines[*j].directive) {
            continue;
        }
        let ends_where_it_began = code.iter().all(|j| lines[*j].depth_after >= lines[start].depth_before)
            && code.last().is_some_and(|j| lines[*j].depth_after == lines[start].depth_before);
        let fine = match lines[start].opener {
            // Top level: a whole declaration, after a finished one.
            None => {
                let last = code.iter().rev().find(|j| !lines[**j].directive).copied().unwrap_or(start);
                let before = (0..start).rev().find(|j| !lines[*j].blank);
                ends_where_it_began
                    && lines[last].code.trim_end().ends_with([';', '}'])
                    && before.is_none_or(|j| lines[j].directive || (lines[j].depth_after == 0 && lines[j].code.trim_end().ends_with([';', '}'])))
            }
            Some(open) => {
                let head = opener_text(&lines, open);
                match () {
                    _ if head.contains('(') || head.contains('=') => false,
                    // Nothing but the block's end after them.
                    _ if head.contains("enum") => {
                        ends_where_it_began && (i..lines.len()).find(|j| !lines[*j].blank).is_some_and(|j| lines[j].code.trim_start().starts_with('}'))
                    }
                    _ => (head.contains("struct") || head.contains("union")) && ends_where_it_began,
                }
            }
        };
        if !fine {
            return false;
        }
    }
    true
}

/// One line of a header, as its braces and comments leave it.
struct Line {
    /// The line without comments.
    code: String,
    /// No code (empty, or only a comment).
    blank: bool,
    /// Part of a preprocessor directive; `directive_start`: its first line.
    directive: bool,
    directive_start: bool,
    depth_before: usize,
    depth_after: usize,
    /// The line whose `{` opened the innermost block this line starts in.
    opener: Option<usize>,
}

fn scan(lines: &[&str]) -> Vec<Line> {
    let mut out: Vec<Line> = Vec::new();
    let mut in_comment = false;
    let mut open: Vec<usize> = Vec::new();
    let mut continued = false;
    for (i, raw) in lines.iter().enumerate() {
        let code = strip_comments(raw, &mut in_comment);
        let directive_start = !continued && code.trim_start().starts_with('#');
        let directive = directive_start || continued;
        continued = directive && raw.trim_end().ends_with('\\');
        let depth_before = open.len();
        let opener = open.last().copied();
        if !directive {
            for c in code.chars() {
                match c {
                    '{' => open.push(i),
                    '}' => {
                        open.pop();
                    }
                    _ => {}
                }
            }
        }
        let blank = code.trim().is_empty();
        out.push(Line { code, blank, directive, directive_start, depth_before, depth_after: open.len(), opener });
    }
    out
}

/// The text before the `{` that opened a block: its line, or the line
/// before when the brace stands alone.
fn opener_text(lines: &[Line], open: usize) -> String {
    let line = lines[open].code.split('{').next().unwrap_or_default().trim().to_owned();
    match (line.is_empty(), open.checked_sub(1)) {
        (true, Some(prev)) => lines[prev].code.trim().to_owned(),
        _ => line,
    }
}

/// Lines of `new` not in a longest common subsequence with `old`; `None`
/// when `old` has lines that are not in `new` (something was changed or
/// removed) or the files are too large to compare.
fn added_lines(old: &[&str], new: &[&str]) -> Option<Vec<bool>> {
    // Common head and tail first: a header fix is a few lines.
    let head = old.iter().zip(new).take_while(|(a, b)| a == b).count();
    let tail = old[head..].iter().rev().zip(new[head..].iter().rev()).take_while(|(a, b)| a == b).count();
    let (a, b) = (&old[head..old.len() - tail], &new[head..new.len() - tail]);
    if a.len() * b.len() > 4_000_000 {
        return None;
    }
    // lcs[i][j]: common subsequence of a[i..] and b[j..].
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    if lcs[0][0] as usize != a.len() {
        return None;
    }
    let mut added = vec![false; new.len()];
    let (mut i, mut j) = (0, 0);
    while j < b.len() {
        if i < a.len() && a[i] == b[j] && lcs[i][j] == lcs[i + 1][j + 1] + 1 {
            i += 1;
        } else {
            added[head + j] = true;
        }
        j += 1;
    }
    Some(added)
}

/// The line without its comments; `in_comment` carries a `/* ...` over.
pub(super) fn strip_comments(line: &str, in_comment: &mut bool) -> String {
    let mut out = String::new();
    let mut rest = line;
    loop {
        if *in_comment {
            match rest.find("*/") {
                Some(e) => {
                    rest = &rest[e + 2..];
                    *in_comment = false;
                }
                None => return out,
            }
        }
        match (rest.find("/*"), rest.find("//")) {
            (Some(b), l) if l.is_none_or(|l| b < l) => {
                out.push_str(&rest[..b]);
                rest = &rest[b + 2..];
                *in_comment = true;
            }
            (_, Some(l)) => {
                out.push_str(&rest[..l]);
                return out;
            }
            _ => {
                out.push_str(rest);
                return out;
            }
        }
    }
}

/// A `#define` of a name the old header does not define.
fn is_new_define(line: &str, old: &str) -> bool {
    let rest = line.trim_start().trim_start_matches('#').trim_start();
    let Some(rest) = rest.strip_prefix("define") else { return false };
    let name: String = rest.trim_start().chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
    !name.is_empty()
        && !old.lines().any(|l| {
            let l = l.trim_start().trim_start_matches('#').trim_start();
            l.strip_prefix("define").is_some_and(|r| r.trim_start().starts_with(&name))
        })
}

#[cfg(test)]
mod tests {
    use super::only_adds_names;

    const OLD: &str = "#ifndef _X_H\n#define _X_H\n\n#define FLAG_A 1\n\nenum state {\n\tS_IDLE,\n\tS_BUSY,\n};\n\n\
        struct conn {\n\tint id;\n\tint refs;\n};\n\n\
        static inline int conn_busy(struct conn *c)\n{\n\treturn c->refs > 1;\n}\n\nint conn_get(struct conn *c);\n\n#endif\n";

    fn with(after: &str, insert: &str) -> String {
        let at = OLD.find(after).expect("anchor") + after.len();
        format!("{}{insert}{}", &OLD[..at], &OLD[at..])
    }

    /// A header change that only adds names leaves the code of every file
    /// that does not use them as it was, so only the diff's own files are
    /// compared; anything that may change an existing name's meaning keeps
    /// the header refused.
    #[test]
    fn a_header_change_that_only_adds_names_is_told_from_one_that_changes_code() {
        // New names: a macro, an inline helper with its comment, a prototype,
        // a struct member (the layout check's business), a last enumerator.
        assert!(only_adds_names(OLD, &with("#define FLAG_A 1\n", "#define FLAG_DESTROYING 2\n")));
        assert!(only_adds_names(
            OLD,
            &with("int conn_get(struct conn *c);\n", "\n/* Lock the conn. */\nstatic inline void conn_lock(struct conn *c)\n{\n\tc->refs++;\n}\nvoid conn_bump(struct conn *c);\n")
        ));
        assert!(only_adds_names(OLD, &with("\tint refs;\n", "\tint gen;\n")));
        assert!(only_adds_names(OLD, &with("\tS_BUSY,\n", "\tS_DEAD,\n")));
        assert!(only_adds_names(OLD, OLD), "no change at all");
        // A flag's #define among a struct's members (fsnotify_backend.h),
        // after a macro call the parser cannot end.
        let old = format!("DECLARE_THING(x)\n{OLD}");
        assert!(only_adds_names(&old, &old.replace("\tint refs;\n", "\tint refs;\n#define CONN_DESTROYING 0x04\n")));

        // What may change code that does not name anything new.
        assert!(!only_adds_names(OLD, &with("\treturn c->refs > 1;\n", "\tif (!c)\n\t\treturn 0;\n")), "a line in an existing inline function");
        assert!(!only_adds_names(OLD, &with("\tS_IDLE,\n", "\tS_NEW,\n")), "an enumerator that renumbers the next");
        assert!(!only_adds_names(OLD, &OLD.replace("refs > 1", "refs > 2")), "a changed line");
        assert!(!only_adds_names(OLD, &OLD.replace("#define FLAG_A 1\n", "")), "a removed line");
        assert!(!only_adds_names(OLD, &with("#define _X_H\n", "#include <linux/y.h>\n")), "an include");
        assert!(!only_adds_names(OLD, &with("#define FLAG_A 1\n", "#undef FLAG_A\n#define FLAG_A 3\n")), "a redefinition");
    }
}
