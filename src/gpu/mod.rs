//! The GPU backend, bottom up: `device` (adapter, device, queue, error scopes),
//! `memory` (buffer creation), `readback` (mapping and waiting), `upload` (the
//! host calls' mapped upload buffers), `transfer` (a host call's input and
//! gradient moved in pieces), `workgroup` (the row kernels'
//! workgroup-size policy), `row_split` (the split-row policy), `unaligned_f32`
//! (how f32 rows not in aligned groups of 4 are reached), `gradient_order` (in
//! which order the gradient pass walks a row), `shader_checks` (the run-time
//! checks the kernels are compiled with); `kernels`
//! (pipelines, bind-group layouts,
//! chunking and dispatch shapes, one file per loss); `outputs` (the outputs of a
//! recorded call) and `workspace` (the host-call buffers); `context` (the public
//! [`Context`](crate::Context), which owns the device, the kernels and the
//! workspace); the cross-entropy's two doors: `device_call` (record into the
//! caller's encoder) and `host_call` (upload, record the same passes, read back);
//! `slices` (checks of the caller's buffer slices) and `family_call`, the two
//! doors of the BCE / KL / entropy family.
//! No file imports one listed after it.

pub(crate) mod context;
pub(crate) mod device;
pub(crate) mod device_call;
pub(crate) mod family_call;
pub(crate) mod gradient_order;
pub(crate) mod host_call;
pub(crate) mod kernels;
pub(crate) mod memory;
pub(crate) mod outputs;
pub(crate) mod readback;
pub(crate) mod row_split;
pub(crate) mod shader_checks;
pub(crate) mod slices;
pub(crate) mod transfer;
pub(crate) mod unaligned_f32;
pub(crate) mod upload;
pub(crate) mod workgroup;
pub(crate) mod workspace;
