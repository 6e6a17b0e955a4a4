//! What every phase of a run reads: the flags, the cluster it is part of,
//! the subscribers' shared slots, and the meter on the server's process.

use std::sync::Arc;

use crate::Args;
use crate::cluster::Cluster;
use crate::server::Meter;
use crate::subscribers::Shared;

pub struct Setup<'a> {
    pub args: &'a Args,
    pub cluster: &'a Cluster,
    pub shared: Arc<Shared>,
    pub meter: Meter,
}
