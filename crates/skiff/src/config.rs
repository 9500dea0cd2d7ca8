//! `--config FILE`: flags from a YAML file (`listen: 0.0.0.0:6443`, `node-label: [a=b]`,
//! `isolated: true`), turned into command-line flags placed before the ones given, so that the
//! command line wins, as k3s' config file works.

use std::ffi::OsString;
use std::path::Path;

use anyhow::{bail, Context};
use serde_json::Value;

/// The flags a config file stands for, checked against the subcommand's `known` long flags.
pub fn flags(yaml: &str, file: &Path, known: &[String]) -> anyhow::Result<Vec<OsString>> {
    let name = file.display();
    let doc: Value =
        serde_saphyr::from_str(yaml).with_context(|| format!("config {name}: not valid YAML"))?;
    let map = match doc {
        Value::Object(map) => map,
        Value::Null => return Ok(Vec::new()),
        _ => bail!("config {name}: must be a mapping of flag names to values"),
    };
    let mut out = Vec::new();
    for (key, value) in map {
        if !known.contains(&key) {
            bail!(
                "config {name}: key {key:?} is not a flag of this command (known: {})",
                known.join(", ")
            );
        }
        let flag = format!("--{key}");
        let scalar = |v: &Value| -> anyhow::Result<String> {
            match v {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                Value::Bool(b) => Ok(b.to_string()),
                _ => bail!("config {name}: key {key:?}: expected a string, number or boolean"),
            }
        };
        match &value {
            Value::Bool(true) => out.push(flag.into()),
            Value::Bool(false) | Value::Null => {}
            Value::Array(items) => {
                for item in items {
                    out.push(flag.clone().into());
                    out.push(scalar(item)?.into());
                }
            }
            other => {
                out.push(flag.into());
                out.push(scalar(other)?.into());
            }
        }
    }
    Ok(out)
}

/// The command line with the flags of `--config FILE` (or `SKIFF_CONFIG`) inserted after the
/// subcommand; `known` gives a subcommand's long flags.
pub fn expand(
    args: Vec<OsString>,
    known: impl Fn(&str) -> Option<Vec<String>>,
) -> anyhow::Result<Vec<OsString>> {
    let mut file = std::env::var_os("SKIFF_CONFIG");
    let mut rest = Vec::with_capacity(args.len());
    let mut iter = args.into_iter();
    while let Some(arg) = iter.next() {
        let text = arg.to_string_lossy().into_owned();
        if text == "--config" {
            file = Some(iter.next().context("--config needs a file")?);
        } else if let Some(path) = text.strip_prefix("--config=") {
            file = Some(path.into());
        } else {
            rest.push(arg);
        }
    }
    let Some(file) = file else {
        return Ok(rest);
    };
    let path = Path::new(&file);
    let subcommand = rest.get(1).map(|s| s.to_string_lossy().into_owned());
    let known = subcommand.as_deref().and_then(&known).with_context(|| {
        format!(
            "--config {} needs a subcommand that takes flags",
            path.display()
        )
    })?;
    let yaml = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    let extra = flags(&yaml, path, &known)?;
    rest.splice(2..2, extra);
    Ok(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> Vec<String> {
        ["listen", "node-label", "isolated", "agent-port"]
            .map(String::from)
            .to_vec()
    }

    #[test]
    fn keys_become_flags() {
        let yaml = "listen: 0.0.0.0:6443\nnode-label: [zone=a, disk=ssd]\nisolated: true\nagent-port: 10250\n";
        let got = flags(yaml, Path::new("c.yaml"), &known()).unwrap();
        let got: Vec<String> = got.iter().map(|s| s.to_string_lossy().into()).collect();
        assert_eq!(
            got,
            [
                "--listen",
                "0.0.0.0:6443",
                "--node-label",
                "zone=a",
                "--node-label",
                "disk=ssd",
                "--isolated",
                "--agent-port",
                "10250"
            ]
        );
        assert!(flags("isolated: false\n", Path::new("c"), &known())
            .unwrap()
            .is_empty());
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        let err = flags("lisen: x\n", Path::new("/etc/skiff.yaml"), &known()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("config /etc/skiff.yaml: key \"lisen\" is not a flag of this command"),
            "{err}"
        );
        let err = flags("listen: {a: b}\n", Path::new("c.yaml"), &known()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "config c.yaml: key \"listen\": expected a string, number or boolean"
        );
        let err = flags("- a\n", Path::new("c.yaml"), &known()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "config c.yaml: must be a mapping of flag names to values"
        );
    }

    #[test]
    fn the_command_line_comes_after_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("skiff.yaml");
        std::fs::write(&file, "listen: 0.0.0.0:6443\n").unwrap();
        let args: Vec<OsString> = ["skiff", "up", "--config"]
            .iter()
            .map(OsString::from)
            .chain([
                file.clone().into_os_string(),
                "--listen".into(),
                "127.0.0.1:1".into(),
            ])
            .collect();
        let got = expand(args, |_| Some(known())).unwrap();
        let got: Vec<String> = got.iter().map(|s| s.to_string_lossy().into()).collect();
        assert_eq!(
            got,
            [
                "skiff",
                "up",
                "--listen",
                "0.0.0.0:6443",
                "--listen",
                "127.0.0.1:1"
            ]
        );
    }
}
