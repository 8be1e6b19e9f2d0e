//! The operator subcommands: `netd config show|set` and `netd leases [--json]`.

use std::io::Write;

use serde::Serialize;

use crate::cli::{ConfigAction, KvArgs};
use crate::error::{Error, Result};
use crate::kv::Kv;
use crate::subnet::{LeaseAttrs, SubnetKey};

async fn connect(args: &KvArgs) -> Result<Kv> {
    if args.etcd_endpoints.is_empty() {
        return Err(Error::Usage(
            "subcommands need --etcd-endpoints (or NETD_ETCD_ENDPOINTS)".into(),
        ));
    }
    let creds = args.credentials()?;
    let tls = args.client_tls()?;
    Kv::connect_as(
        &args.etcd_endpoints,
        &args.etcd_prefix,
        creds.as_ref(),
        tls.as_ref(),
    )
    .await
}

/// `netd config show|set`.
pub async fn config(args: &KvArgs, action: &ConfigAction, out: &mut impl Write) -> Result<()> {
    let kv = connect(args).await?;
    match action {
        ConfigAction::Show => {
            let text = kv
                .get_config_text()
                .await?
                .ok_or_else(|| Error::ConfigMissing {
                    key: kv.config_key(),
                })?;
            writeln!(out, "{}", text.trim_end()).map_err(|e| Error::file("stdout", e))?;
        }
        ConfigAction::Set { json } => {
            let text = match json.strip_prefix('@') {
                Some(path) => {
                    let path = std::path::Path::new(path);
                    if !crate::file_trust::check_file(path)? {
                        return Err(Error::file(
                            path,
                            std::io::Error::from(std::io::ErrorKind::NotFound),
                        ));
                    }
                    std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?
                }
                None => json.clone(),
            };
            let cfg = kv.put_config(&text).await?;
            for w in crate::netconf::warnings(&text) {
                eprintln!("netd: warning: {w}");
            }
            let mut nets = Vec::new();
            if let Some(c4) = &cfg.ipv4 {
                nets.push(format!(
                    "network {} subnets /{} ({} available)",
                    c4.network,
                    c4.subnet_len,
                    c4.subnet_count()
                ));
            }
            if let Some(c6) = &cfg.ipv6 {
                let only = if cfg.ipv4.is_none() {
                    " (IPv6-only)"
                } else {
                    ""
                };
                nets.push(format!(
                    "IPv6 network {} subnets /{} ({} available){only}",
                    c6.network,
                    c6.subnet_len,
                    c6.subnet_count()
                ));
            }
            writeln!(
                out,
                "stored {}: {}, backend {}",
                kv.config_key(),
                nets.join(", "),
                cfg.backend.type_name()
            )
            .map_err(|e| Error::file("stdout", e))?;
        }
    }
    Ok(())
}

/// One row of `netd leases`.
#[derive(Debug, Serialize)]
struct Row {
    key: String,
    /// The IPv4 subnet; null for an IPv6-only record (`0.0.0.0-0&...`).
    subnet: Option<String>,
    /// The IPv6 subnet of a dual-stack or IPv6-only record.
    ipv6_subnet: Option<String>,
    /// Null for an IPv6-only record (whose PublicIP is flannel's 0.0.0.0).
    public_ip: Option<String>,
    public_ipv6: Option<String>,
    backend: Option<String>,
    /// The IPv4 device's VtepMAC; the IPv6 device's in an IPv6-only record.
    vtep_mac: Option<String>,
    /// KV lease id in hex, as etcdctl prints it; null for a reservation.
    lease: Option<String>,
    /// Seconds until the lease expires unless renewed (the KV's TimeToLive); null for a
    /// reservation, −1 for a lease the KV no longer has.
    expires_in: Option<i64>,
    reservation: bool,
    /// Why the record is unusable, when it is.
    error: Option<String>,
}

/// `netd leases [--json]`.
pub async fn leases(args: &KvArgs, json: bool, out: &mut impl Write) -> Result<()> {
    let kv = connect(args).await?;
    let records = kv.list_raw().await?;
    let mut ttls = std::collections::HashMap::new();
    for &(_, _, lease) in &records {
        if lease != 0 && !ttls.contains_key(&lease) {
            ttls.insert(lease, kv.time_to_live(lease).await?);
        }
    }
    let rows: Vec<Row> = records
        .into_iter()
        .map(|(key, value, lease)| {
            let subnet = SubnetKey::from_key(&key);
            let attrs = serde_json::from_slice::<LeaseAttrs>(&value);
            let error = match (&subnet, &attrs) {
                (Err(e), _) => Some(e.clone()),
                (_, Err(e)) => Some(format!("bad JSON value: {e}")),
                _ => None,
            };
            let attrs = attrs.ok();
            Row {
                ipv6_subnet: subnet
                    .as_ref()
                    .ok()
                    .and_then(|s| s.v6)
                    .map(|s| s.to_string()),
                public_ip: attrs
                    .as_ref()
                    .filter(|_| !matches!(&subnet, Ok(s) if s.v4.is_none()))
                    .map(|a| a.public_ip.to_string()),
                subnet: subnet.ok().and_then(|s| s.v4).map(|s| s.to_string()),
                public_ipv6: attrs
                    .as_ref()
                    .and_then(|a| a.public_ipv6)
                    .map(|a| a.to_string()),
                backend: attrs.as_ref().map(|a| a.backend_type.clone()),
                vtep_mac: attrs
                    .as_ref()
                    .and_then(|a| a.backend_data.as_ref().or(a.backend_v6_data.as_ref()))
                    .map(|d| d.vtep_mac.to_string()),
                lease: (lease != 0).then(|| format!("{lease:016x}")),
                expires_in: ttls.get(&lease).copied(),
                reservation: lease == 0,
                error,
                key,
            }
        })
        .collect();
    let w = |e| Error::file("stdout", e);
    if json {
        serde_json::to_writer_pretty(&mut *out, &rows)?;
        writeln!(out).map_err(w)?;
        return Ok(());
    }
    // The IPv6 columns appear when some record has an IPv6 subnet.
    let dual = rows.iter().any(|r| r.ipv6_subnet.is_some());
    let v6_columns = |subnet: &str, ip: &str| {
        if dual {
            format!("{subnet:<24} {ip:<26} ")
        } else {
            String::new()
        }
    };
    writeln!(
        out,
        "{:<20} {:<16} {}{:<8} {:<18} {:<17} {:<10} NOTE",
        "SUBNET",
        "PUBLIC-IP",
        v6_columns("IPV6-SUBNET", "PUBLIC-IPV6"),
        "BACKEND",
        "VTEP-MAC",
        "LEASE",
        "EXPIRES-IN"
    )
    .map_err(w)?;
    for r in rows {
        let note = match (&r.error, r.reservation) {
            (Some(e), _) => format!("malformed: {e}"),
            (None, true) => "reservation".into(),
            _ => String::new(),
        };
        let expires = match r.expires_in {
            None => "never".to_string(),
            Some(s) if s < 0 => "expired".to_string(),
            Some(s) => human_duration(s),
        };
        writeln!(
            out,
            "{:<20} {:<16} {}{:<8} {:<18} {:<17} {:<10} {}",
            match (r.subnet, &r.error) {
                (Some(s), _) => s,
                (None, None) => "-".into(),
                (None, Some(_)) => r.key,
            },
            r.public_ip.unwrap_or_else(|| "-".into()),
            v6_columns(
                r.ipv6_subnet.as_deref().unwrap_or("-"),
                r.public_ipv6.as_deref().unwrap_or("-")
            ),
            r.backend.unwrap_or_else(|| "-".into()),
            r.vtep_mac.unwrap_or_else(|| "-".into()),
            r.lease.unwrap_or_else(|| "-".into()),
            expires,
            note
        )
        .map_err(w)?;
    }
    Ok(())
}

/// Seconds as `23h59m`, `4m05s` or `42s`.
fn human_duration(secs: i64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}
