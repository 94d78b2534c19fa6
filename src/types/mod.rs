//! The types at the bottom of the house, shared by every loss and both backends:
//! the batch [`Shape`], logits and gradients ([`Logits`], [`LogitsMut`]), targets
//! ([`Targets`]), what a host call is given ([`HostLogits`], [`HostBatch`]) and
//! what a call returns ([`Loss`], [`LossOutput`]), and the vocabulary
//! shards of the sharded cross-entropy ([`VocabShard`], [`ShardStats`],
//! [`ShardSums`], [`CombinedStats`]). Nothing here imports from
//! above (options, backends, losses).

mod host;
mod logits;
mod output;
mod shape;
mod sharded;
mod targets;

pub use host::{HostBatch, HostLogits};
pub use logits::{LogitType, Logits, LogitsMut};
pub use output::{Loss, LossOutput};
pub use shape::Shape;
pub use sharded::{CombinedStats, ShardStats, ShardSums, VocabShard};
pub(crate) use sharded::{check_rows, check_shard_targets, check_tiling};
pub use targets::{RowTargets, TargetType, Targets};
