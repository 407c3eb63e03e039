pub use eskv_core::*;
