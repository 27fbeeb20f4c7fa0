//! Fixture: a valid cdylib that exports none of the plugin symbols.

/// Something exported that is not a plugin entry point.
#[no_mangle]
pub extern "C" fn unrelated_function() -> i32 {
    7
}
