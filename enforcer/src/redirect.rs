//! `tenantry-enforcer init-redirect`: iptables `nat` rules that send inbound TCP for the
//! application's ports to the enforcer, so a Service can keep targeting the app's port.
//!
//! Inbound packets arrive through PREROUTING; connections opened inside the pod (other containers
//! calling the app on the pod IP) go through OUTPUT, where the enforcer's own user id is excluded
//! so its connections to the application are never sent back to itself. Loopback traffic is
//! left alone: that is how the enforcer reaches the app. The rules live in their own chains, which
//! are flushed first, so running the init container twice gives the same rules.

use std::process::Command;

use thiserror::Error;

use crate::config::RedirectArgs;

pub const INBOUND_CHAIN: &str = "TENANTRY_INBOUND";
pub const OUTPUT_CHAIN: &str = "TENANTRY_OUTPUT";

#[derive(Debug, Error)]
pub enum RedirectError {
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("the proxy port {0} is also an application port")]
    Loop(u16),
}

/// The iptables invocations (without the binary), in order.
pub fn rules(args: &RedirectArgs) -> Result<Vec<Vec<String>>, RedirectError> {
    if args.app_ports.contains(&args.proxy_port) {
        return Err(RedirectError::Loop(args.proxy_port));
    }
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let proxy = args.proxy_port.to_string();
    let uid = args.exclude_uid.to_string();
    let mut out = vec![];
    for chain in [INBOUND_CHAIN, OUTPUT_CHAIN] {
        // `-N` fails if the chain exists; `-F` then empties it. Either way it ends up empty.
        out.push(s(&["-t", "nat", "-N", chain]));
        out.push(s(&["-t", "nat", "-F", chain]));
    }
    for port in &args.app_ports {
        let port = port.to_string();
        out.push(s(&[
            "-t",
            "nat",
            "-A",
            INBOUND_CHAIN,
            "-p",
            "tcp",
            "--dport",
            &port,
            "-j",
            "REDIRECT",
            "--to-ports",
            &proxy,
        ]));
    }
    out.push(s(&[
        "-t",
        "nat",
        "-A",
        OUTPUT_CHAIN,
        "-m",
        "owner",
        "--uid-owner",
        &uid,
        "-j",
        "RETURN",
    ]));
    out.push(s(&[
        "-t",
        "nat",
        "-A",
        OUTPUT_CHAIN,
        "-o",
        "lo",
        "-j",
        "RETURN",
    ]));
    for port in &args.app_ports {
        let port = port.to_string();
        out.push(s(&[
            "-t",
            "nat",
            "-A",
            OUTPUT_CHAIN,
            "-p",
            "tcp",
            "--dport",
            &port,
            "-j",
            "REDIRECT",
            "--to-ports",
            &proxy,
        ]));
    }
    for (parent, chain) in [("PREROUTING", INBOUND_CHAIN), ("OUTPUT", OUTPUT_CHAIN)] {
        out.push(s(&["-t", "nat", "-C", parent, "-p", "tcp", "-j", chain]));
    }
    Ok(out)
}

/// Applies the rules (or prints them with `--dry-run`).
pub fn apply(args: &RedirectArgs, out: &mut impl std::io::Write) -> Result<(), RedirectError> {
    for rule in rules(args)? {
        let command = format!("{} {}", args.iptables, rule.join(" "));
        if args.dry_run {
            let _ = writeln!(out, "{command}");
            continue;
        }
        let run = |rule: &[String]| {
            Command::new(&args.iptables)
                .args(rule)
                .output()
                .map_err(|source| RedirectError::Spawn {
                    command: command.clone(),
                    source,
                })
        };
        let result = run(&rule)?;
        let is_new_chain = rule.get(2).is_some_and(|a| a == "-N");
        let is_check = rule.get(2).is_some_and(|a| a == "-C");
        if is_check {
            // Jump to our chain only once, however often the init container runs.
            if !result.status.success() {
                let mut append = rule.clone();
                append[2] = "-A".to_string();
                let added = run(&append)?;
                if !added.status.success() {
                    return Err(RedirectError::Failed {
                        command: format!("{} {}", args.iptables, append.join(" ")),
                        stderr: String::from_utf8_lossy(&added.stderr).trim().to_string(),
                    });
                }
            }
            continue;
        }
        if !result.status.success() && !is_new_chain {
            return Err(RedirectError::Failed {
                command,
                stderr: String::from_utf8_lossy(&result.stderr).trim().to_string(),
            });
        }
        let _ = writeln!(out, "{command}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_redirect_each_app_port_and_exclude_the_enforcer() {
        let args = RedirectArgs {
            app_ports: vec![8080, 9090],
            proxy_port: 15001,
            exclude_uid: 1337,
            iptables: "iptables".into(),
            dry_run: true,
        };
        let text: Vec<String> = rules(&args).unwrap().iter().map(|r| r.join(" ")).collect();
        assert!(
            text.contains(
                &"-t nat -A TENANTRY_INBOUND -p tcp --dport 8080 -j REDIRECT --to-ports 15001"
                    .to_string()
            )
        );
        assert!(
            text.contains(
                &"-t nat -A TENANTRY_INBOUND -p tcp --dport 9090 -j REDIRECT --to-ports 15001"
                    .to_string()
            )
        );
        assert!(text.contains(
            &"-t nat -A TENANTRY_OUTPUT -m owner --uid-owner 1337 -j RETURN".to_string()
        ));
        let mut bad = args.clone();
        bad.app_ports.push(15001);
        assert!(rules(&bad).is_err());
    }
}
