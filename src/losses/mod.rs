//! The public builders, one file per loss family: the top floor. Each builder
//! holds plain options (`options.rs`), checks its inputs, and hands the call to a
//! [`crate::Backend`] (host slices) or records it into the caller's encoder
//! (device buffers). Their setters are written once, in `setters.rs`.

pub(crate) mod binary;
pub(crate) mod cross_entropy;
pub(crate) mod divergence;
pub(crate) mod family;
pub(crate) mod setters;
pub(crate) mod sharded;
