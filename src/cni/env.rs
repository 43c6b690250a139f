//! The CNI environment: `CNI_COMMAND` and the variables each verb needs,
//! validated as SPEC.md section 2 and libcni's skel do.
//!
//! Which variables each verb requires (SPEC.md, "CNI operations"):
//!
//! | verb    | required                                      | read when set        |
//! |---------|-----------------------------------------------|----------------------|
//! | ADD     | CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME        | CNI_ARGS, CNI_PATH   |
//! | CHECK   | CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME        | CNI_ARGS, CNI_PATH   |
//! | DEL     | CNI_CONTAINERID, CNI_IFNAME                   | CNI_NETNS, CNI_ARGS, CNI_PATH |
//! | GC      | CNI_PATH                                      |                      |
//! | STATUS  |                                               | CNI_PATH             |
//! | VERSION |                                               |                      |
//!
//! An empty variable counts as unset (skel does the same), so DEL with
//! `CNI_NETNS=` is DEL without a namespace. Variables a verb does not use
//! are not read at all: GC has no attachment parameters, and a stale
//! `CNI_IFNAME` in a runtime's environment must not fail it. Every value
//! read must be UTF-8 (results and errors are JSON strings); one that is
//! not is code 4 naming the variable.

use std::ffi::OsString;
use std::path::PathBuf;

use super::error::CniError;

/// The longest interface name Linux accepts (IFNAMSIZ 16 less the NUL).
pub const MAX_IFNAME_LEN: usize = 15;

/// A CNI verb, from `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// `ADD`: attach the container to the network.
    Add,
    /// `DEL`: detach it; best-effort and idempotent.
    Del,
    /// `CHECK`: verify an attachment (0.4.0 and later).
    Check,
    /// `GC`: release everything not in the valid attachments (1.1.0).
    Gc,
    /// `STATUS`: say whether ADD can work (1.1.0).
    Status,
    /// `VERSION`: list the supported versions.
    Version,
}

impl Command {
    /// Every verb.
    pub const ALL: [Command; 6] = [
        Command::Add,
        Command::Del,
        Command::Check,
        Command::Gc,
        Command::Status,
        Command::Version,
    ];

    /// The verb as `CNI_COMMAND` spells it (upper case).
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Gc => "GC",
            Command::Status => "STATUS",
            Command::Version => "VERSION",
        }
    }

    /// The verb `s` names, exactly (the spec's verbs are upper case and
    /// skel compares them case-sensitively).
    pub fn parse(s: &str) -> Option<Command> {
        Command::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Whether the verb acts on one attachment (container ID + interface).
    pub fn is_attachment(self) -> bool {
        matches!(self, Command::Add | Command::Del | Command::Check)
    }

    /// The variables this verb requires, besides `CNI_COMMAND`.
    pub fn required_vars(self) -> &'static [&'static str] {
        match self {
            Command::Add | Command::Check => &[CONTAINERID, NETNS, IFNAME],
            Command::Del => &[CONTAINERID, IFNAME],
            Command::Gc => &[PATH],
            Command::Status | Command::Version => &[],
        }
    }
}

const COMMAND: &str = "CNI_COMMAND";
const CONTAINERID: &str = "CNI_CONTAINERID";
const NETNS: &str = "CNI_NETNS";
const IFNAME: &str = "CNI_IFNAME";
const ARGS: &str = "CNI_ARGS";
const PATH: &str = "CNI_PATH";

/// The validated CNI environment of one invocation.
///
/// Fields a verb does not use are `None` / empty (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    /// The verb.
    pub command: Command,
    /// `CNI_CONTAINERID`: set for ADD, DEL and CHECK.
    pub container_id: Option<String>,
    /// `CNI_NETNS`: set for ADD and CHECK, and for DEL when given.
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME`: set for ADD, DEL and CHECK.
    pub ifname: Option<String>,
    /// `CNI_ARGS` as `(key, value)` pairs in order (ADD, DEL, CHECK).
    pub args: Vec<(String, String)>,
    /// `CNI_PATH`, split on `:`, empty entries dropped.
    pub path: Vec<PathBuf>,
}

impl Env {
    /// Reads and validates the CNI variables among `vars` (any others are
    /// ignored; for a repeated name the last wins, as in an environment).
    ///
    /// # Errors
    /// Code 4 for: `CNI_COMMAND` unset or not a verb; a variable the verb
    /// requires unset or empty (all such listed at once); a value that is
    /// not UTF-8; `CNI_CONTAINERID` not an alphanumeric followed by
    /// alphanumerics, `_`, `.` or `-`; `CNI_IFNAME` empty, longer than 15
    /// bytes, `.` or `..`, or holding `/`, `:` or whitespace; a `CNI_ARGS`
    /// pair that is not `KEY=VALUE` with a non-empty key and one `=`.
    /// The message names the variable.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> Result<Env, CniError> {
        let mut raw: [Option<OsString>; 6] = Default::default();
        let names = [COMMAND, CONTAINERID, NETNS, IFNAME, ARGS, PATH];
        for (k, v) in vars {
            if let Some(i) = names.iter().position(|n| k.as_os_str() == *n) {
                raw[i] = Some(v);
            }
        }
        let [command, container_id, netns, ifname, args, path] = raw;

        let command = match utf8(COMMAND, command)? {
            None => return Err(CniError::missing_env(&[COMMAND])),
            Some(s) => Command::parse(&s).ok_or_else(|| {
                CniError::invalid_env(
                    COMMAND,
                    format!("unknown CNI_COMMAND {s:?}; expected ADD, DEL, CHECK, GC, STATUS or VERSION"),
                )
            })?,
        };

        let attach = command.is_attachment();
        let container_id = if attach {
            utf8(CONTAINERID, container_id)?
        } else {
            None
        };
        let netns = if attach { utf8(NETNS, netns)? } else { None };
        let ifname = if attach { utf8(IFNAME, ifname)? } else { None };
        let args = if attach { utf8(ARGS, args)? } else { None };
        let path = match command {
            Command::Version => None,
            _ => utf8(PATH, path)?,
        };

        let present = |name: &str| match name {
            CONTAINERID => container_id.is_some(),
            NETNS => netns.is_some(),
            IFNAME => ifname.is_some(),
            _ => path.is_some(),
        };
        let missing: Vec<&str> = command
            .required_vars()
            .iter()
            .copied()
            .filter(|n| !present(n))
            .collect();
        if !missing.is_empty() {
            return Err(CniError::missing_env(&missing));
        }

        if let Some(id) = &container_id {
            validate_container_id(id)?;
        }
        if let Some(name) = &ifname {
            validate_ifname(name)
                .map_err(|why| CniError::invalid_env(IFNAME, format!("{why}: {name:?}")))?;
        }
        let args = match &args {
            Some(a) => parse_args(a)?,
            None => Vec::new(),
        };
        let path = path
            .map(|p| {
                p.split(':')
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default();

        Ok(Env {
            command,
            container_id,
            netns: netns.map(PathBuf::from),
            ifname,
            args,
            path,
        })
    }

    /// [`Env::from_vars`] over this process's environment.
    ///
    /// # Errors
    /// As [`Env::from_vars`].
    pub fn from_process() -> Result<Env, CniError> {
        Env::from_vars(std::env::vars_os())
    }

    /// `(container ID, interface name)`: the attachment ADD, DEL and CHECK
    /// act on. [`Env::from_vars`] guarantees `Some` for those verbs and
    /// gives `None` for the others.
    pub fn attachment(&self) -> Option<(&str, &str)> {
        Some((self.container_id.as_deref()?, self.ifname.as_deref()?))
    }

    /// The value of `CNI_ARGS` key `key` (the last, if repeated; keys
    /// compare exactly, as libcni's `LoadArgs` matches field names).
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A variable's value as UTF-8; unset and empty are both `None`.
fn utf8(name: &str, value: Option<OsString>) -> Result<Option<String>, CniError> {
    match value {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) => v.into_string().map(Some).map_err(|v| {
            CniError::invalid_env(
                name,
                format!("value is not UTF-8: {:?}", v.to_string_lossy()),
            )
        }),
    }
}

/// `^[A-Za-z0-9][A-Za-z0-9_.-]*$`, as libcni's `ValidateContainerID`.
fn validate_container_id(id: &str) -> Result<(), CniError> {
    let mut bytes = id.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphanumeric());
    let rest_ok = bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if first_ok && rest_ok {
        return Ok(());
    }
    Err(CniError::invalid_env(
        CONTAINERID,
        format!(
            "{id:?} must start with a letter or digit, followed by letters, digits, '_', '.' or '-'"
        ),
    ))
}

/// The kernel's `dev_valid_name` rules, as libcni's
/// `ValidateInterfaceName`: the reason when `name` is not one.
pub fn validate_ifname(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("interface name is empty");
    }
    if name.len() > MAX_IFNAME_LEN {
        return Err("interface name is longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return Err("interface name is . or ..");
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err("interface name contains '/', ':' or whitespace");
    }
    Ok(())
}

/// `K=V;K=V`: each pair splits on exactly one `=` (libcni's `LoadArgs`
/// rejects `a=b=c` and an empty pair), and the key must not be empty.
fn parse_args(s: &str) -> Result<Vec<(String, String)>, CniError> {
    s.split(';')
        .map(|pair| {
            let mut kv = pair.split('=');
            match (kv.next(), kv.next(), kv.next()) {
                (Some(k), Some(v), None) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
                _ => Err(CniError::invalid_env(
                    ARGS,
                    format!("invalid pair {pair:?}: expected KEY=VALUE pairs separated by ';'"),
                )),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStringExt;

    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    fn add(extra: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        let mut v = vars(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc123"),
            ("CNI_NETNS", "/run/netns/blue"),
            ("CNI_IFNAME", "eth0"),
        ]);
        v.extend(vars(extra));
        v
    }

    fn code_and_msg(v: Vec<(OsString, OsString)>) -> (u32, String) {
        let e = Env::from_vars(v).expect_err("invalid environment");
        (e.code, e.msg)
    }

    #[test]
    fn add_reads_every_attachment_variable() {
        let env = Env::from_vars(add(&[
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=web"),
            ("CNI_PATH", "/opt/cni/bin::/usr/lib/cni"),
        ]))
        .expect("valid");
        assert_eq!(env.command, Command::Add);
        assert_eq!(env.container_id.as_deref(), Some("abc123"));
        assert_eq!(env.netns, Some(PathBuf::from("/run/netns/blue")));
        assert_eq!(env.ifname.as_deref(), Some("eth0"));
        assert_eq!(env.arg("K8S_POD_NAME"), Some("web"));
        assert_eq!(
            env.path,
            vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]
        );
    }

    #[test]
    fn attachment_verbs_have_an_attachment_and_others_none() {
        let env = Env::from_vars(add(&[])).expect("valid");
        assert_eq!(env.attachment(), Some(("abc123", "eth0")));
        let gc = Env::from_vars(vars(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/p")])).expect("valid");
        assert_eq!(gc.attachment(), None);
    }

    #[test]
    fn a_missing_command_is_code_4_naming_cni_command() {
        let (code, msg) = code_and_msg(vars(&[("CNI_IFNAME", "eth0")]));
        assert_eq!(code, 4);
        assert!(msg.contains("CNI_COMMAND"), "{msg}");
    }

    #[test]
    fn an_unknown_command_is_code_4_naming_cni_command() {
        for c in ["FROB", "add", ""] {
            let (code, msg) = code_and_msg(vars(&[("CNI_COMMAND", c)]));
            assert_eq!(code, 4, "{c:?}");
            assert!(msg.contains("CNI_COMMAND"), "{msg}");
        }
    }

    #[test]
    fn add_lists_all_missing_variables() {
        let (code, msg) = code_and_msg(vars(&[("CNI_COMMAND", "ADD")]));
        assert_eq!(code, 4);
        assert!(
            msg.contains("CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME"),
            "{msg}"
        );
    }

    #[test]
    fn check_requires_a_netns() {
        let (code, msg) = code_and_msg(vars(&[
            ("CNI_COMMAND", "CHECK"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_IFNAME", "eth0"),
        ]));
        assert_eq!(code, 4);
        assert!(msg.contains("CNI_NETNS"), "{msg}");
    }

    #[test]
    fn del_tolerates_an_empty_netns() {
        let env = Env::from_vars(vars(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_NETNS", ""),
            ("CNI_IFNAME", "eth0"),
        ]))
        .expect("DEL without a namespace is valid");
        assert_eq!(env.netns, None);
    }

    #[test]
    fn del_requires_container_id_and_ifname() {
        let (_, msg) = code_and_msg(vars(&[("CNI_COMMAND", "DEL")]));
        assert!(msg.contains("CNI_CONTAINERID,CNI_IFNAME"), "{msg}");
    }

    #[test]
    fn gc_requires_cni_path() {
        let (code, msg) = code_and_msg(vars(&[("CNI_COMMAND", "GC")]));
        assert_eq!(code, 4);
        assert!(msg.contains("CNI_PATH"), "{msg}");
    }

    #[test]
    fn gc_ignores_attachment_variables() {
        let env = Env::from_vars(vars(&[
            ("CNI_COMMAND", "GC"),
            ("CNI_PATH", "/opt/cni/bin"),
            ("CNI_IFNAME", "not a valid name at all"),
            ("CNI_ARGS", "garbage"),
        ]))
        .expect("GC has no attachment parameters");
        assert_eq!((env.ifname, env.args.len()), (None, 0));
    }

    #[test]
    fn status_and_version_need_no_container() {
        for c in ["STATUS", "VERSION"] {
            let env = Env::from_vars(vars(&[("CNI_COMMAND", c)])).expect("valid");
            assert_eq!(env.container_id, None);
        }
    }

    #[test]
    fn container_id_must_start_alphanumeric() {
        for id in ["-abc", "_abc", ".abc"] {
            let (code, msg) = code_and_msg(add(&[("CNI_CONTAINERID", id)]));
            assert_eq!(code, 4, "{id}");
            assert!(msg.contains("CNI_CONTAINERID"), "{msg}");
        }
    }

    #[test]
    fn container_id_rejects_other_characters() {
        for id in ["a/b", "a b", "a:b", "é", "a;b"] {
            let (code, _) = code_and_msg(add(&[("CNI_CONTAINERID", id)]));
            assert_eq!(code, 4, "{id}");
        }
    }

    #[test]
    fn container_id_accepts_underscore_dot_dash() {
        assert!(Env::from_vars(add(&[("CNI_CONTAINERID", "a1_b.c-d")])).is_ok());
    }

    #[test]
    fn ifname_of_15_bytes_is_valid_and_16_is_not() {
        assert!(Env::from_vars(add(&[("CNI_IFNAME", "abcdefghijklmno")])).is_ok());
        let (code, msg) = code_and_msg(add(&[("CNI_IFNAME", "abcdefghijklmnop")]));
        assert_eq!(code, 4);
        assert!(msg.contains("CNI_IFNAME"), "{msg}");
    }

    #[test]
    fn ifname_length_counts_bytes_not_characters() {
        // 8 two-byte characters: 16 bytes.
        let (code, _) = code_and_msg(add(&[("CNI_IFNAME", "éééééééé")]));
        assert_eq!(code, 4);
    }

    #[test]
    fn ifname_rejects_dots_slashes_colons_and_whitespace() {
        for name in [".", "..", "a/b", "eth0:1", "a b", "a\tb", "a\u{a0}b"] {
            let (code, _) = code_and_msg(add(&[("CNI_IFNAME", name)]));
            assert_eq!(code, 4, "{name:?}");
        }
    }

    #[test]
    fn a_malformed_args_pair_is_code_4_naming_cni_args() {
        for a in ["K", "K=V;X", "=V", "a=b=c", "K=V;", ";"] {
            let (code, msg) = code_and_msg(add(&[("CNI_ARGS", a)]));
            assert_eq!(code, 4, "{a:?}");
            assert!(msg.contains("CNI_ARGS"), "{msg}");
        }
    }

    #[test]
    fn args_allow_empty_values() {
        let env =
            Env::from_vars(add(&[("CNI_ARGS", "K8S_POD_NAMESPACE=;IP=10.88.0.5")])).expect("valid");
        assert_eq!(env.arg("K8S_POD_NAMESPACE"), Some(""));
        assert_eq!(env.arg("IP"), Some("10.88.0.5"));
    }

    #[test]
    fn a_non_utf8_value_is_code_4_naming_the_variable() {
        let mut v = add(&[]);
        v.push(("CNI_IFNAME".into(), OsString::from_vec(vec![b'e', 0xff])));
        let (code, msg) = code_and_msg(v);
        assert_eq!(code, 4);
        assert!(msg.contains("CNI_IFNAME"), "{msg}");
    }

    #[test]
    fn a_non_utf8_command_is_code_4() {
        let v = vec![("CNI_COMMAND".into(), OsString::from_vec(vec![0xc3]))];
        assert_eq!(code_and_msg(v).0, 4);
    }

    #[test]
    fn the_last_of_repeated_variables_wins() {
        let env = Env::from_vars(add(&[("CNI_IFNAME", "net1")])).expect("valid");
        assert_eq!(env.ifname.as_deref(), Some("net1"));
    }
}
