//! Small safe wrappers over the few system calls that nix does not wrap
//! and that modules other than the holder, netns and rootless need. Every
//! `unsafe` block outside those three modules lives here.
