//! STATUS (spec 1.1): ready when netd's subnet file is readable and valid (and a delegated
//! IPAM plugin says it is ready); otherwise error 50, "unavailable".

use crate::config::NetConf;
use crate::env::Invocation;
use crate::error::{CniError, Result};
use crate::ipam::Ipam;

pub fn run(inv: &Invocation, conf: &NetConf) -> Result<()> {
    crate::subnet_env::load(&conf.subnet_file).map_err(|e| CniError::Unavailable(e.to_string()))?;
    Ipam::for_conf(conf).status(inv)
}
