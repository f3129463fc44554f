//! Bytes to packets. (To be written.)
