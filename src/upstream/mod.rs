//! placeholder: the upstream module is being written.
