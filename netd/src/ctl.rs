//! The operator subcommands: `netd config show|set` and `netd leases [--json]`.

use std::io::Write;

use serde::Serialize;

use crate::cli::{ConfigAction, KvArgs};
use crate::error::{Error, Result};
use crate::kv::Kv;
use crate::subnet::{LeaseAttrs, Subnet};

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
            for f in crate::netconf::unknown_fields(&text) {
                eprintln!(
                    "netd: warning: field {f:?} is not a netd/flannel config field; it is ignored"
                );
            }
            writeln!(
                out,
                "stored {}: network {} subnets /{} ({} available), backend {}",
                kv.config_key(),
                cfg.network,
                cfg.subnet_len,
                cfg.subnet_count(),
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
    subnet: Option<String>,
    public_ip: Option<String>,
    backend: Option<String>,
    vtep_mac: Option<String>,
    /// KV lease id in hex, as etcdctl prints it; null for a reservation.
    lease: Option<String>,
    reservation: bool,
    /// Why the record is unusable, when it is.
    error: Option<String>,
}

/// `netd leases [--json]`.
pub async fn leases(args: &KvArgs, json: bool, out: &mut impl Write) -> Result<()> {
    let kv = connect(args).await?;
    let rows: Vec<Row> = kv
        .list_raw()
        .await?
        .into_iter()
        .map(|(key, value, lease)| {
            let subnet = Subnet::from_key(&key);
            let attrs = serde_json::from_slice::<LeaseAttrs>(&value);
            let error = match (&subnet, &attrs) {
                (Err(e), _) => Some(e.clone()),
                (_, Err(e)) => Some(format!("bad JSON value: {e}")),
                _ => None,
            };
            let attrs = attrs.ok();
            Row {
                subnet: subnet.ok().map(|s| s.to_string()),
                public_ip: attrs.as_ref().map(|a| a.public_ip.to_string()),
                backend: attrs.as_ref().map(|a| a.backend_type.clone()),
                vtep_mac: attrs
                    .as_ref()
                    .and_then(|a| a.backend_data.as_ref())
                    .map(|d| d.vtep_mac.to_string()),
                lease: (lease != 0).then(|| format!("{lease:016x}")),
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
    writeln!(
        out,
        "{:<20} {:<16} {:<8} {:<18} {:<17} NOTE",
        "SUBNET", "PUBLIC-IP", "BACKEND", "VTEP-MAC", "LEASE"
    )
    .map_err(w)?;
    for r in rows {
        let note = match (&r.error, r.reservation) {
            (Some(e), _) => format!("malformed: {e}"),
            (None, true) => "reservation".into(),
            _ => String::new(),
        };
        writeln!(
            out,
            "{:<20} {:<16} {:<8} {:<18} {:<17} {}",
            r.subnet.unwrap_or(r.key),
            r.public_ip.unwrap_or_else(|| "-".into()),
            r.backend.unwrap_or_else(|| "-".into()),
            r.vtep_mac.unwrap_or_else(|| "-".into()),
            r.lease.unwrap_or_else(|| "-".into()),
            note
        )
        .map_err(w)?;
    }
    Ok(())
}
