//! Packets to bytes. (To be written.)
