//! Panics inside redb turned into errors.
//!
//! redb may panic on a file damaged outside it (e.g. `unreachable code` in its B-tree). A
//! router must say "the store is damaged" instead, so every call into redb runs inside
//! [`catch`]: the panic is caught, and the panic hook keeps quiet about it (the error that
//! replaces it is logged with the file's name and the remedy).

use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, PanicHookInfo};
use std::sync::Once;

thread_local! {
    /// `Some` while this thread runs inside [`catch`]: the message of a panic caught there.
    static CAPTURE: RefCell<Option<Option<String>>> = const { RefCell::new(None) };
}

static HOOK: Once = Once::new();

fn describe(info: &PanicHookInfo<'_>) -> String {
    let payload = info.payload();
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned());
    match info.location() {
        Some(at) => format!("{message} (at {}:{})", at.file(), at.line()),
        None => message,
    }
}

/// Installs (once) a panic hook that records panics raised inside [`catch`] instead of printing
/// them; every other panic goes to the hook that was installed before.
fn install_hook() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let captured = CAPTURE.with(|c| match c.borrow_mut().as_mut() {
                Some(slot) => {
                    *slot = Some(describe(info));
                    true
                }
                None => false,
            });
            if !captured {
                previous(info);
            }
        }));
    });
}

/// Runs `f`; a panic inside it becomes `Err(message)`.
pub fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    install_hook();
    let outer = CAPTURE.with(|c| c.borrow_mut().replace(None));
    let result = std::panic::catch_unwind(AssertUnwindSafe(f));
    let message = CAPTURE.with(|c| std::mem::replace(&mut *c.borrow_mut(), outer));
    result.map_err(|_| {
        format!(
            "panic inside the store: {}",
            message
                .flatten()
                .unwrap_or_else(|| "(no message)".to_owned())
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_error_with_its_message() {
        assert_eq!(catch(|| 7), Ok(7));
        let err = catch(|| -> u32 { panic!("btree says no") }).unwrap_err();
        assert!(err.contains("btree says no"), "{err}");
        assert!(err.contains("guard.rs"), "{err}");
        // Nested: the inner panic is the inner call's.
        let outer = catch(|| catch(|| -> u32 { unreachable!() }).unwrap_err()).unwrap();
        assert!(outer.contains("unreachable"), "{outer}");
    }
}
