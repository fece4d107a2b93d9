//! PoV host driver (in progress).
