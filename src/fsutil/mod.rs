//! File-system helpers, one room each: durable atomic writes ([`atomic`]), page-cache-first
//! chunk reads ([`read`]) and the buffers those reads are lent out in ([`pool`]).

pub mod atomic;
pub(crate) mod pool;
pub(crate) mod read;

pub use atomic::{Existing, write_atomic};
