//! The GPU backend: [`context`] (adapter, device, limits), `kernels` (pipelines,
//! bind-group layouts, chunking and dispatch shapes) and [`buffers`] (device
//! outputs, the host-call workspace, readback).

pub mod buffers;
pub mod context;
pub(crate) mod kernels;
