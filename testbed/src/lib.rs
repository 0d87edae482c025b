//! testbed: not implemented yet (see the open issue); this crate only reserves its place in the workspace.

pub mod kube;
