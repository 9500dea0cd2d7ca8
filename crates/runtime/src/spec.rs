//! The OCI runtime configuration (`config.json`) of a container: a pure function of what the pod
//! asks for, what the image says and where the sandbox keeps its namespaces.

use std::path::Path;

use serde_json::{json, Value};

use crate::image::format::ProcessDefaults;
use crate::{ContainerConfig, Error};

/// containerd's default capability set (what Docker grants too).
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Everything `build` needs beyond the container's own configuration.
pub struct SpecInput<'a> {
    pub container: &'a ContainerConfig,
    pub image: &'a ProcessDefaults,
    /// The sandbox's directory: `ns/{net,ipc,uts}` and `etc/{hosts,hostname,resolv.conf}`.
    pub sandbox_dir: &'a Path,
    pub hostname: &'a str,
    pub cgroup_path: &'a str,
    /// The user and group the image's `User` names, already looked up in its `/etc/passwd`.
    pub image_user: (u32, u32),
}

/// The process's argv by Kubernetes' rules: `command` replaces the image's entrypoint, `args`
/// its cmd, and a command without args drops the image's cmd.
pub fn argv(container: &ContainerConfig, image: &ProcessDefaults) -> Result<Vec<String>, Error> {
    let entrypoint = image.entrypoint.clone().unwrap_or_default();
    let cmd = image.cmd.clone().unwrap_or_default();
    let argv = match (container.command.is_empty(), container.args.is_empty()) {
        (true, true) => [entrypoint, cmd].concat(),
        (true, false) => [entrypoint, container.args.clone()].concat(),
        (false, true) => container.command.clone(),
        (false, false) => [container.command.clone(), container.args.clone()].concat(),
    };
    if argv.is_empty() {
        return Err(Error::InvalidContainer(format!(
            "container {:?}: no command specified and the image has neither entrypoint nor cmd",
            container.name
        )));
    }
    Ok(argv)
}

/// The environment: the image's, then the container's (which wins for the same name), then
/// `HOSTNAME`, and a default `PATH` when neither gives one.
pub fn environment(
    container: &ContainerConfig,
    image: &ProcessDefaults,
    hostname: &str,
) -> Vec<String> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |name: &str, value: &str| match env.iter_mut().find(|(n, _)| n == name) {
        Some(entry) => entry.1 = value.to_string(),
        None => env.push((name.to_string(), value.to_string())),
    };
    for entry in image.env.iter().flatten() {
        let (name, value) = entry.split_once('=').unwrap_or((entry, ""));
        set(name, value);
    }
    for (name, value) in &container.env {
        set(name, value);
    }
    set("HOSTNAME", hostname);
    if !env.iter().any(|(n, _)| n == "PATH") {
        let (name, value) = DEFAULT_PATH.split_once('=').expect("constant");
        env.insert(0, (name.into(), value.into()));
    }
    env.into_iter().map(|(n, v)| format!("{n}={v}")).collect()
}

/// Resolves an image's `User` (`name`, `uid`, `name:group`, `uid:gid`, or empty for root)
/// against the image's `/etc/passwd` and `/etc/group`.
pub fn resolve_user(user: &str, passwd: &str, group: &str) -> Result<(u32, u32), Error> {
    if user.is_empty() {
        return Ok((0, 0));
    }
    let (user_part, group_part) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    // name:password:uid:gid:... and name:password:gid:...
    let lookup = |table: &str, key: &str, id_field: usize| -> Option<(u32, Option<u32>)> {
        table.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.first() != Some(&key) && fields.get(id_field) != Some(&key) {
                return None;
            }
            let id = fields.get(id_field)?.parse().ok()?;
            Some((id, fields.get(3).and_then(|g| g.parse().ok())))
        })
    };
    let not_found = |what: &str, name: &str| {
        Error::InvalidContainer(format!(
            "unable to find {what} {name}: no matching entries in the image's /etc/{}",
            if what == "user" { "passwd" } else { "group" }
        ))
    };
    let (uid, primary_gid) = match user_part.parse::<u32>() {
        Ok(uid) => (
            uid,
            lookup(passwd, user_part, 2)
                .and_then(|(_, g)| g)
                .unwrap_or(0),
        ),
        Err(_) => {
            let (uid, gid) =
                lookup(passwd, user_part, 2).ok_or_else(|| not_found("user", user_part))?;
            (uid, gid.unwrap_or(0))
        }
    };
    let gid = match group_part {
        None => primary_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => lookup(group, g, 2)
                .map(|(gid, _)| gid)
                .ok_or_else(|| not_found("group", g))?,
        },
    };
    Ok((uid, gid))
}

fn capabilities(container: &ContainerConfig) -> Vec<String> {
    let security = &container.security;
    let canonical = |c: &String| {
        let upper = c.to_ascii_uppercase();
        if upper.starts_with("CAP_") {
            upper
        } else {
            format!("CAP_{upper}")
        }
    };
    let drop: Vec<String> = security.drop_capabilities.iter().map(canonical).collect();
    if drop.iter().any(|c| c == "CAP_ALL") {
        return security.add_capabilities.iter().map(canonical).collect();
    }
    let mut caps: Vec<String> = DEFAULT_CAPABILITIES
        .iter()
        .map(|c| c.to_string())
        .filter(|c| !drop.contains(c))
        .collect();
    for cap in security.add_capabilities.iter().map(canonical) {
        if !caps.contains(&cap) {
            caps.push(cap);
        }
    }
    caps
}

/// The container's `config.json`.
pub fn build(input: &SpecInput) -> Result<Value, Error> {
    let c = input.container;
    let args = argv(c, input.image)?;
    let env = environment(c, input.image, input.hostname);
    let caps = capabilities(c);
    let uid = c.security.run_as_user.unwrap_or(input.image_user.0);
    let gid = c
        .security
        .run_as_group
        .unwrap_or(if c.security.run_as_user.is_some() {
            0
        } else {
            input.image_user.1
        });
    let cwd = c
        .working_dir
        .clone()
        .or_else(|| input.image.working_dir.clone().filter(|d| !d.is_empty()))
        .unwrap_or_else(|| "/".into());
    let sandbox = |p: &str| input.sandbox_dir.join(p).to_string_lossy().into_owned();

    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", "ro"]}),
    ];
    for file in ["hosts", "hostname", "resolv.conf"] {
        mounts.push(json!({
            "destination": format!("/etc/{file}"), "type": "bind",
            "source": sandbox(&format!("etc/{file}")), "options": ["rbind", "rprivate", "rw"],
        }));
    }
    for mount in &c.mounts {
        mounts.push(json!({
            "destination": mount.container_path, "type": "bind",
            "source": mount.host_path.to_string_lossy(),
            "options": ["rbind", "rprivate", if mount.read_only { "ro" } else { "rw" }],
        }));
    }

    let mut resources = json!({"devices": [{"allow": false, "access": "rwm"}]});
    let r = &c.resources;
    let mut cpu = serde_json::Map::new();
    if let Some(shares) = r.cpu_shares {
        cpu.insert("shares".into(), json!(shares));
    }
    if let Some(quota) = r.cpu_quota {
        cpu.insert("quota".into(), json!(quota));
        cpu.insert("period".into(), json!(r.cpu_period));
    }
    if !cpu.is_empty() {
        resources["cpu"] = Value::Object(cpu);
    }
    if let Some(limit) = r.memory_limit {
        resources["memory"] = json!({"limit": limit});
    }

    let ns = |kind: &str, file: Option<&str>| match file {
        Some(file) => json!({"type": kind, "path": sandbox(&format!("ns/{file}"))}),
        None => json!({"type": kind}),
    };
    Ok(json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": uid, "gid": gid},
            "args": args,
            "env": env,
            "cwd": cwd,
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps,
            },
            "noNewPrivileges": !c.security.allow_privilege_escalation,
            "oomScoreAdj": c.resources.oom_score_adj,
        },
        "root": {"path": "rootfs", "readonly": c.security.read_only_root_filesystem},
        "mounts": mounts,
        "linux": {
            "cgroupsPath": input.cgroup_path,
            "resources": resources,
            "namespaces": [
                ns("pid", None), ns("mount", None),
                ns("network", Some("net")), ns("ipc", Some("ipc")), ns("uts", Some("uts")),
            ],
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(entrypoint: &[&str], cmd: &[&str]) -> ProcessDefaults {
        let strings =
            |v: &[&str]| (!v.is_empty()).then(|| v.iter().map(|s| s.to_string()).collect());
        ProcessDefaults {
            entrypoint: strings(entrypoint),
            cmd: strings(cmd),
            env: Some(vec!["PATH=/bin".into(), "MODE=image".into()]),
            ..Default::default()
        }
    }

    fn container(command: &[&str], args: &[&str]) -> ContainerConfig {
        ContainerConfig {
            name: "app".into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            args: args.iter().map(|s| s.to_string()).collect(),
            ..ContainerConfig::new("app", "busybox")
        }
    }

    #[test]
    fn argv_follows_kubernetes_rules() {
        let img = image(&["httpd", "-f"], &["-h", "/www"]);
        let cases: [(&[&str], &[&str], &[&str]); 4] = [
            (&[], &[], &["httpd", "-f", "-h", "/www"]),
            (&[], &["-p", "80"], &["httpd", "-f", "-p", "80"]),
            (&["sh", "-c", "true"], &[], &["sh", "-c", "true"]),
            (&["sleep"], &["5"], &["sleep", "5"]),
        ];
        for (command, args, want) in cases {
            assert_eq!(
                argv(&container(command, args), &img).unwrap(),
                want,
                "{command:?} {args:?}"
            );
        }
        let err = argv(&container(&[], &[]), &image(&[], &[])).unwrap_err();
        assert!(err.to_string().contains("no command specified"), "{err}");
    }

    #[test]
    fn container_env_overrides_the_image_and_path_is_always_set() {
        let mut c = container(&[], &[]);
        c.env = vec![("MODE".into(), "pod".into()), ("EXTRA".into(), "1".into())];
        assert_eq!(
            environment(&c, &image(&[], &[]), "web-0"),
            ["PATH=/bin", "MODE=pod", "EXTRA=1", "HOSTNAME=web-0"]
        );
        assert_eq!(
            environment(&c, &ProcessDefaults::default(), "h")[0],
            DEFAULT_PATH
        );
    }

    #[test]
    fn image_users_are_looked_up() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\nweb:x:33:34:web:/var/www:/bin/false\n";
        let group = "root:x:0:\nstaff:x:50:\n";
        for (user, want) in [
            ("", (0, 0)),
            ("web", (33, 34)),
            ("33", (33, 34)),
            ("1000", (1000, 0)),
            ("web:staff", (33, 50)),
            ("1000:7", (1000, 7)),
        ] {
            assert_eq!(resolve_user(user, passwd, group).unwrap(), want, "{user}");
        }
        let err = resolve_user("nobody", passwd, group)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unable to find user nobody"), "{err}");
    }

    #[test]
    fn capabilities_start_from_containerds_set() {
        let mut c = container(&[], &[]);
        assert_eq!(capabilities(&c).len(), DEFAULT_CAPABILITIES.len());
        c.security.drop_capabilities = vec!["NET_RAW".into()];
        c.security.add_capabilities = vec!["NET_ADMIN".into()];
        let caps = capabilities(&c);
        assert!(!caps.contains(&"CAP_NET_RAW".to_string()));
        assert!(caps.contains(&"CAP_NET_ADMIN".to_string()));
        c.security.drop_capabilities = vec!["ALL".into()];
        assert_eq!(capabilities(&c), ["CAP_NET_ADMIN"]);
    }

    #[test]
    fn limits_and_security_reach_the_spec() {
        let mut c = container(&["sleep", "1"], &[]);
        c.resources.cpu_shares = Some(512);
        c.resources.cpu_quota = Some(50_000);
        c.resources.memory_limit = Some(64 << 20);
        c.security.run_as_user = Some(1000);
        c.security.read_only_root_filesystem = true;
        let img = image(&[], &[]);
        let spec = build(&SpecInput {
            container: &c,
            image: &img,
            sandbox_dir: Path::new("/data/pods/u1"),
            hostname: "web",
            cgroup_path: "/skiff/n1/podu1/app-0",
            image_user: (0, 0),
        })
        .unwrap();
        assert_eq!(
            spec["linux"]["resources"]["cpu"],
            json!({"shares": 512, "quota": 50000, "period": 100000})
        );
        assert_eq!(
            spec["linux"]["resources"]["memory"]["limit"],
            json!(64 << 20)
        );
        assert_eq!(spec["process"]["user"], json!({"uid": 1000, "gid": 0}));
        assert_eq!(spec["process"]["noNewPrivileges"], json!(true));
        assert_eq!(spec["root"]["readonly"], json!(true));
        assert_eq!(
            spec["linux"]["namespaces"][2],
            json!({"type": "network", "path": "/data/pods/u1/ns/net"})
        );
    }
}
