//! placeholder: the index module is being written.
