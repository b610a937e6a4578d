//! A `#![no_std]` crate with its own panic handler that links cim-spec and cim-model.
//!
//! If either of them (or anything they depend on) links `std`, `std`'s panic handler
//! meets this one and the build fails with "found duplicate lang item `panic_impl`".
//! `.ci/run` builds this crate explicitly; it has no tests of its own (a test harness
//! would bring `std` in by itself).
#![no_std]

extern crate cim_model;
extern crate cim_spec;

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {}
}
