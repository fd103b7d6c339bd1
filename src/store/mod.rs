//! placeholder: the store module is being written.
