//! PostgreSQL's configuration files as the server reads them:
//! `postgresql.conf`, the files it includes (`include`,
//! `include_if_exists`, `include_dir`, relative to the including file) and
//! `postgresql.auto.conf` last, in every spelling its lexer accepts
//! (`name = value`, `name value`, `name=value`, any case, quoted or not).
//! `backup-fetch` uses it to name the recovery settings a backup carries.

use std::path::{Path, PathBuf};

use tracing::warn;

/// PostgreSQL's own limit on nested includes (`CONF_FILE_MAX_DEPTH`).
const MAX_DEPTH: usize = 10;

/// One `name value` line of a configuration file.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    /// The file, as reached from the data directory.
    pub file: PathBuf,
    /// 1-based.
    pub line: usize,
    /// The name as written (PostgreSQL compares names case-insensitively).
    pub name: String,
    /// The value as written, quotes included.
    pub value: String,
}

impl Setting {
    /// `file:line: name = value`, the file relative to `base` when below it.
    pub fn describe(&self, base: &Path) -> String {
        let file = self.file.strip_prefix(base).unwrap_or(&self.file);
        format!(
            "{}:{}: {} = {}",
            file.display(),
            self.line,
            self.name,
            self.value
        )
    }
}

/// Every setting of the data directory's configuration in the order the
/// server applies them: `postgresql.conf` with its includes where they
/// stand, then `postgresql.auto.conf`. A file that cannot be read is
/// skipped with a warning (the server itself refuses a missing `include`).
pub fn settings(data_dir: &Path) -> Vec<Setting> {
    let mut out = Vec::new();
    for name in ["postgresql.conf", "postgresql.auto.conf"] {
        read_file(&data_dir.join(name), true, 0, &mut out);
    }
    out
}

fn read_file(path: &Path, if_exists: bool, depth: usize, out: &mut Vec<Setting>) {
    if depth > MAX_DEPTH {
        warn!(file = %path.display(), "configuration files nested more than {MAX_DEPTH} deep; not read further");
        return;
    }
    let text = match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if if_exists && e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            warn!(file = %path.display(), error = %e, "configuration file not read");
            return;
        }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    for (index, line) in text.lines().enumerate() {
        let Some((name, value)) = parse_line(line) else {
            continue;
        };
        let target = || dir.join(unquote(value));
        match name.to_ascii_lowercase().as_str() {
            "include" => read_file(&target(), false, depth + 1, out),
            "include_if_exists" => read_file(&target(), true, depth + 1, out),
            "include_dir" => read_dir(&target(), depth + 1, out),
            _ => out.push(Setting {
                file: path.to_path_buf(),
                line: index + 1,
                name: name.to_string(),
                value: value.to_string(),
            }),
        }
    }
}

/// `include_dir`: its `*.conf` files not starting with `.`, by name.
fn read_dir(dir: &Path, depth: usize, out: &mut Vec<Setting>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            warn!(dir = %dir.display(), error = %e, "configuration directory not read");
            return;
        }
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".conf") && !n.starts_with('.'))
        .collect();
    names.sort();
    for name in names {
        let path = dir.join(name);
        if path.is_file() {
            read_file(&path, false, depth, out);
        }
    }
}

/// The name and raw value of a setting line; `None` for blank lines,
/// comments and lines the server would reject.
fn parse_line(line: &str) -> Option<(&str, &str)> {
    let line = line.trim_start();
    let name_len = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '$' | '.')))
        .unwrap_or(line.len());
    let (name, rest) = line.split_at(name_len);
    if name.is_empty() || !name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        return None;
    }
    let rest = rest.trim_start();
    let rest = rest.strip_prefix('=').unwrap_or(rest).trim_start();
    let value_len = if rest.starts_with('\'') {
        quoted_len(rest)?
    } else {
        rest.find(|c: char| c.is_whitespace() || c == '#')
            .unwrap_or(rest.len())
    };
    let value = &rest[..value_len];
    (!value.is_empty()).then_some((name, value))
}

/// The length of the quoted string `s` starts with (`''` and backslash
/// escapes inside), or `None` when it is not closed on its line.
fn quoted_len(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut i = 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'\'' if bytes.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// A raw value without its quotes, `''` and backslash escapes resolved.
pub fn unquote(value: &str) -> String {
    let Some(inner) = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) else {
        return value.to_string();
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' | '\'' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_the_server_accepts_is_read() {
        for (line, expected) in [
            (
                "recovery_target_time = '2026-12-05 07:00:00+00'",
                Some(("recovery_target_time", "'2026-12-05 07:00:00+00'")),
            ),
            (
                "Recovery_Target_Time '2026-12-05 07:00:00+00' # by hand",
                Some(("Recovery_Target_Time", "'2026-12-05 07:00:00+00'")),
            ),
            (
                "  recovery_target_action=promote",
                Some(("recovery_target_action", "promote")),
            ),
            (
                "RECOVERY_TARGET_XID=\t42#x",
                Some(("RECOVERY_TARGET_XID", "42")),
            ),
            (
                "restore_command = 'cp ''a b'' %p # not a comment'",
                Some(("restore_command", "'cp ''a b'' %p # not a comment'")),
            ),
            (
                "restore_command 'x \\' y'",
                Some(("restore_command", "'x \\' y'")),
            ),
            (
                "pg_stat_statements.max 100",
                Some(("pg_stat_statements.max", "100")),
            ),
            ("# recovery_target_time = 'x'", None),
            ("", None),
            ("recovery_target_time = 'unclosed", None),
            ("9lives = 1", None),
        ] {
            assert_eq!(parse_line(line), expected, "{line:?}");
        }
        assert_eq!(unquote("'cp ''a b'' \\'x'"), "cp 'a b' 'x");
        assert_eq!(unquote("promote"), "promote");
    }

    #[test]
    fn includes_are_followed_where_they_stand_and_auto_conf_comes_last() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("conf.d")).unwrap();
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::fs::write(
            d.join("postgresql.conf"),
            "a = 1\nINCLUDE 'sub/one.conf'\ninclude_dir = conf.d\ninclude_if_exists 'absent.conf'\nz 26\n",
        )
        .unwrap();
        // Relative to the including file's directory.
        std::fs::write(d.join("sub/one.conf"), "b = 2\ninclude 'two.conf'\n").unwrap();
        std::fs::write(d.join("sub/two.conf"), "c = 3\n").unwrap();
        std::fs::write(d.join("conf.d/20-e.conf"), "e = 5\n").unwrap();
        std::fs::write(d.join("conf.d/10-d.conf"), "d = 4\n").unwrap();
        std::fs::write(d.join("conf.d/.hidden.conf"), "x = 0\n").unwrap();
        std::fs::write(d.join("conf.d/notes.txt"), "x = 0\n").unwrap();
        std::fs::write(d.join("postgresql.auto.conf"), "f = 6\n").unwrap();
        let got: Vec<String> = settings(d).iter().map(|s| s.describe(d)).collect();
        assert_eq!(
            got,
            [
                "postgresql.conf:1: a = 1",
                "sub/one.conf:1: b = 2",
                "sub/two.conf:1: c = 3",
                "conf.d/10-d.conf:1: d = 4",
                "conf.d/20-e.conf:1: e = 5",
                "postgresql.conf:5: z = 26",
                "postgresql.auto.conf:1: f = 6",
            ]
        );
    }

    #[test]
    fn an_include_loop_ends() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("postgresql.conf"),
            "a = 1\ninclude 'postgresql.conf'\n",
        )
        .unwrap();
        assert_eq!(settings(dir.path()).len(), MAX_DEPTH + 1);
    }
}
