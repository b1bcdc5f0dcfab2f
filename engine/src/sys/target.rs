//! How an operation names its file or socket: a plain descriptor ([`Fd`]) or an index
//! into the ring's registered-file table ([`Fixed`], sent with IOSQE_FIXED_FILE). Two
//! types, as in the `io-uring` crate, so that mixing them up does not compile; code that
//! stores either holds a [`Target`].

use std::os::fd::RawFd;

/// A plain file descriptor. The caller keeps it open until its operations complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fd(pub RawFd);

/// An index into the ring's registered-file table (a direct descriptor).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fixed(pub u32);

/// Either kind, for values that are stored and used later.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    Fd(RawFd),
    Fixed(u32),
}

impl Target {
    /// The table index, for direct descriptors.
    pub fn fixed(self) -> Option<u32> {
        match self {
            Target::Fixed(i) => Some(i),
            Target::Fd(_) => None,
        }
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Fd {}
    impl Sealed for super::Fixed {}
    impl Sealed for super::Target {}
}

/// A file or socket named either way.
pub trait FileTarget: Copy + sealed::Sealed {
    fn target(self) -> Target;
}

impl FileTarget for Fd {
    fn target(self) -> Target {
        Target::Fd(self.0)
    }
}
impl FileTarget for Fixed {
    fn target(self) -> Target {
        Target::Fixed(self.0)
    }
}
impl FileTarget for Target {
    fn target(self) -> Target {
        self
    }
}

/// Builds an SQE with the `io-uring` crate's `types::Fd` or `types::Fixed` (its builders
/// set IOSQE_FIXED_FILE for the latter): `on_target!(t, f => opcode::Read::new(f, p, n).build())`.
macro_rules! on_target {
    ($t:expr, $f:ident => $e:expr) => {
        match $t {
            $crate::sys::target::Target::Fd(fd) => {
                let $f = io_uring::types::Fd(fd);
                $e
            }
            $crate::sys::target::Target::Fixed(i) => {
                let $f = io_uring::types::Fixed(i);
                $e
            }
        }
    };
}
pub(crate) use on_target;
