//! Design-by-contract macros for the paxos workspace.
//!
//! Every critical function in paxos states what it needs (`requires!`), what it
//! promises (`ensures!`) and what stays true across it (`invariant!`). The
//! conditions are ordinary Rust expressions.
//!
//! # Invariants of this crate
//!
//! - **Always type-checked.** A contract is never removed by `#[cfg]`, so a
//!   contract that stops compiling after a refactor is caught in every build,
//!   including release builds.
//! - **Free when off.** Checks are gated on the constant [`ENABLED`]. When it is
//!   `false` the `&&` short-circuits on a constant, the condition expression is
//!   *not evaluated at all* (no side effects, no cost) and the optimiser removes
//!   the branch entirely.
//! - **On in tests.** [`ENABLED`] is `true` when this crate's `contracts` feature
//!   is on (every crate in the workspace turns it on through its
//!   dev-dependency, so `cargo test` checks contracts) or when the build uses
//!   `RUSTFLAGS="--cfg paxos_contracts"` (to check contracts in a release or
//!   benchmark build).
//! - **Clear failures.** A violated contract panics with the kind of contract,
//!   the expression text, the source location and an optional formatted message.
//!
//! Protocol safety checks that must hold in production too (ballot
//! monotonicity, never accepting two values for one slot and ballot) are plain
//! `assert!`, not contracts. Contracts are for the costlier checks.
//!
//! # Example
//!
//! ```
//! use paxos_contracts::{ensures, invariant, requires, snapshot};
//!
//! struct Counter { value: u64, limit: u64 }
//!
//! impl Counter {
//!     fn add(&mut self, n: u64) -> u64 {
//!         requires!(n > 0, "adding zero is a caller bug");
//!         requires!(self.value + n <= self.limit, "would pass the limit {}", self.limit);
//!         let old = snapshot!(self.value);
//!         self.value += n;
//!         ensures!(self.value == old.unwrap() + n);
//!         invariant!(self.value <= self.limit);
//!         self.value
//!     }
//! }
//!
//! let mut c = Counter { value: 0, limit: 10 };
//! assert_eq!(c.add(3), 3);
//! ```
//!
//! # `ensures!` and early returns
//!
//! `ensures!` is a statement at the point where it is written. A `return` or a
//! `?` that leaves the function before it skips the check. Two patterns make a
//! postcondition impossible to skip:
//!
//! 1. **Split the body** into an inner function and check its result in a thin
//!    outer function. Every exit of the inner function passes through the outer
//!    check:
//!
//! ```
//! use paxos_contracts::{ensures, snapshot};
//!
//! struct Log { len: usize }
//! #[derive(Debug)]
//! struct Full;
//!
//! impl Log {
//!     pub fn append(&mut self, n: usize) -> Result<usize, Full> {
//!         let old_len = snapshot!(self.len);
//!         let result = self.append_inner(n);
//!         // Holds on every path, including the early `?` and `return` ones.
//!         ensures!(match &result {
//!             Ok(_) => self.len == old_len.unwrap() + n,
//!             Err(_) => self.len == old_len.unwrap(),
//!         }, "append must be all or nothing");
//!         result
//!     }
//!
//!     fn append_inner(&mut self, n: usize) -> Result<usize, Full> {
//!         if self.len + n > 100 {
//!             return Err(Full);
//!         }
//!         self.len += n;
//!         Ok(self.len)
//!     }
//! }
//! let mut log = Log { len: 0 };
//! assert!(log.append(10).is_ok());
//! assert!(log.append(1000).is_err());
//! ```
//!
//! 2. Use [`checked`], which runs a closure and then the postcondition on its
//!    result, for the same effect without a second function.
#![no_std]

/// Whether contract checks run in this build.
///
/// `true` with the `contracts` feature or `--cfg paxos_contracts`.
pub const ENABLED: bool = cfg!(any(feature = "contracts", paxos_contracts));

/// The kind of a contract, named in failure messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A `requires!` condition: what the caller must ensure.
    Precondition,
    /// An `ensures!` condition: what the function promises.
    Postcondition,
    /// An `invariant!` condition: what stays true between operations.
    Invariant,
}

impl Kind {
    /// The human name used in failure messages.
    pub const fn name(self) -> &'static str {
        match self {
            Kind::Precondition => "precondition",
            Kind::Postcondition => "postcondition",
            Kind::Invariant => "invariant",
        }
    }
}

/// Reports a violated contract. Never returns.
///
/// Not meant to be called directly: the macros call it.
#[cold]
#[inline(never)]
#[track_caller]
pub fn violated(
    kind: Kind,
    expr: &'static str,
    file: &'static str,
    line: u32,
    column: u32,
    message: core::fmt::Arguments<'_>,
) -> ! {
    panic!(
        "contract violated: {} `{}` at {}:{}:{}: {}",
        kind.name(),
        expr,
        file,
        line,
        column,
        message
    )
}

/// Runs `body`, then checks `post` on its result (only when checks are on),
/// then returns the result.
///
/// Every exit of `body`, including `?` and `return` inside the closure,
/// passes through the postcondition.
///
/// ```
/// let r: Result<u32, ()> = paxos_contracts::checked(
///     || { let x: u32 = "7".parse().map_err(|_| ())?; Ok(x * 2) },
///     |r| r.as_ref().map_or(true, |v| v % 2 == 0),
///     "doubling yields an even number",
/// );
/// assert_eq!(r, Ok(14));
/// ```
#[inline(always)]
#[track_caller]
pub fn checked<T>(
    body: impl FnOnce() -> T,
    post: impl FnOnce(&T) -> bool,
    what: &'static str,
) -> T {
    let result = body();
    if ENABLED && !post(&result) {
        let loc = core::panic::Location::caller();
        violated(
            Kind::Postcondition,
            what,
            loc.file(),
            loc.line(),
            loc.column(),
            format_args!("checked() postcondition failed"),
        );
    }
    result
}

/// Checks a contract against an explicit gate. The public macros pass
/// [`ENABLED`]; tests pass `false` or `true` to show both behaviours in one
/// build.
#[doc(hidden)]
#[macro_export]
macro_rules! __contract {
    ($gate:expr, $kind:expr, $cond:expr $(,)?) => {
        if $gate && !($cond) {
            $crate::violated($kind, stringify!($cond), file!(), line!(), column!(),
                format_args!("condition was false"));
        }
    };
    ($gate:expr, $kind:expr, $cond:expr, $($arg:tt)+) => {
        if $gate && !($cond) {
            $crate::violated($kind, stringify!($cond), file!(), line!(), column!(),
                format_args!($($arg)+));
        }
    };
}

/// A precondition: what the caller must make true before the call.
///
/// `requires!(cond)` or `requires!(cond, "format {}", args)`.
#[macro_export]
macro_rules! requires {
    ($($t:tt)+) => { $crate::__contract!($crate::ENABLED, $crate::Kind::Precondition, $($t)+) };
}

/// A postcondition: what the function promises on return.
///
/// See the crate docs for how to keep early returns from skipping it.
#[macro_export]
macro_rules! ensures {
    ($($t:tt)+) => { $crate::__contract!($crate::ENABLED, $crate::Kind::Postcondition, $($t)+) };
}

/// An invariant: what holds between operations on a value.
#[macro_export]
macro_rules! invariant {
    ($($t:tt)+) => { $crate::__contract!($crate::ENABLED, $crate::Kind::Invariant, $($t)+) };
}

/// Takes an "old" value for a postcondition: `Some(expr)` when checks are on,
/// `None` (and `expr` is not evaluated) when they are off.
///
/// Use `old.unwrap()` only inside `ensures!`/`invariant!`, which do not run
/// when checks are off.
#[macro_export]
macro_rules! snapshot {
    ($e:expr) => {
        if $crate::ENABLED {
            ::core::option::Option::Some($e)
        } else {
            ::core::option::Option::None
        }
    };
}

#[cfg(test)]
extern crate std;

#[cfg(test)]
mod tests {
    use super::*;
    use core::cell::Cell;
    use std::string::{String, ToString};

    fn panic_message(f: impl FnOnce() + std::panic::UnwindSafe) -> Option<String> {
        let err = std::panic::catch_unwind(f).err()?;
        if let Some(s) = err.downcast_ref::<String>() {
            Some(s.clone())
        } else {
            err.downcast_ref::<&str>().map(|s| s.to_string())
        }
    }

    #[test]
    fn enabled_matches_build_configuration() {
        assert_eq!(ENABLED, cfg!(any(feature = "contracts", paxos_contracts)));
    }

    #[test]
    fn disabled_gate_never_evaluates_the_condition() {
        let evaluated = Cell::new(0);
        let side_effect = || {
            evaluated.set(evaluated.get() + 1);
            false
        };
        __contract!(false, Kind::Precondition, side_effect());
        __contract!(false, Kind::Invariant, side_effect(), "with message {}", 1);
        assert_eq!(evaluated.get(), 0, "a disabled contract ran its condition");
    }

    #[test]
    fn enabled_gate_evaluates_once_and_panics_with_kind_expr_and_location() {
        let evaluated = Cell::new(0);
        let msg = panic_message(std::panic::AssertUnwindSafe(|| {
            __contract!(
                true,
                Kind::Postcondition,
                {
                    evaluated.set(evaluated.get() + 1);
                    1 + 1 == 3
                },
                "slot {} broke",
                7
            );
        }))
        .expect("an enabled, false contract must panic");
        assert_eq!(evaluated.get(), 1);
        assert!(msg.contains("postcondition"), "{msg}");
        assert!(msg.contains("1 + 1 == 3"), "{msg}");
        assert!(msg.contains(file!()), "{msg}");
        assert!(msg.contains("slot 7 broke"), "{msg}");
    }

    #[test]
    fn enabled_gate_passes_a_true_condition() {
        __contract!(true, Kind::Invariant, 2 > 1);
    }

    /// The public macros follow the build's gate: with checks on (the
    /// `contracts` feature or `--cfg paxos_contracts`) a false condition
    /// panics; with checks off the side-effecting condition never runs.
    #[test]
    fn public_macros_follow_the_build_gate() {
        let evaluated = Cell::new(0);
        let cond = || {
            evaluated.set(evaluated.get() + 1);
            false
        };
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            requires!(cond(), "precondition message");
        }));
        if ENABLED {
            assert!(result.is_err(), "enabled requires! must panic");
            assert_eq!(evaluated.get(), 1);
        } else {
            assert!(result.is_ok(), "disabled requires! must not panic");
            assert_eq!(
                evaluated.get(),
                0,
                "disabled requires! evaluated its condition"
            );
        }
    }

    #[test]
    fn each_macro_names_its_kind() {
        if !ENABLED {
            // Shown by `cargo test -p paxos-contracts --features contracts`,
            // which `cargo xtask ci` runs as well.
            return;
        }
        let r = panic_message(|| requires!(false)).unwrap();
        assert!(r.contains("precondition `false`"), "{r}");
        let e = panic_message(|| ensures!(false)).unwrap();
        assert!(e.contains("postcondition `false`"), "{e}");
        let i = panic_message(|| invariant!(false)).unwrap();
        assert!(i.contains("invariant `false`"), "{i}");
    }

    #[test]
    fn snapshot_is_lazy_when_disabled() {
        let evaluated = Cell::new(0);
        let old = snapshot!({
            evaluated.set(evaluated.get() + 1);
            5u32
        });
        if ENABLED {
            assert_eq!(old, Some(5));
            assert_eq!(evaluated.get(), 1);
        } else {
            assert_eq!(old, None);
            assert_eq!(evaluated.get(), 0);
        }
    }

    #[test]
    fn checked_runs_postcondition_on_every_exit() {
        fn parse_double(s: &str) -> Result<u32, ()> {
            checked(
                || {
                    let v: u32 = s.parse().map_err(|_| ())?;
                    Ok(v * 2)
                },
                |r| r.as_ref().map_or(true, |v| v % 2 == 0),
                "result is even",
            )
        }
        assert_eq!(parse_double("4"), Ok(8));
        assert_eq!(parse_double("x"), Err(()));
        let bad = std::panic::catch_unwind(|| checked(|| 3u32, |v| v % 2 == 0, "even"));
        assert_eq!(bad.is_err(), ENABLED);
    }
}
