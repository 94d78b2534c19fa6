//! The GPU backend: `context` (adapter, device, limits, error scopes), `kernels`
//! (pipelines, bind-group layouts, chunking and dispatch shapes), `buffers`
//! (device outputs, the host-call workspace, readback), and the cross-entropy's
//! two doors: `device_call` (record into the caller's encoder) and `host_call`
//! (upload, record the same passes, read back).

pub(crate) mod buffers;
pub(crate) mod context;
pub(crate) mod device_call;
pub(crate) mod host_call;
pub(crate) mod kernels;
