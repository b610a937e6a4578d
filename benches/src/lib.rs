//! Benchmarks and side-by-side baselines of CIM-rs. The benches arrive with the backends
//! they measure (issues 3, 4 and 6); this crate only holds their place in the layout.
