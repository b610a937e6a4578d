//! The suite's plumbing, run on the reference itself: every property must pass when the
//! backend under test is the oracle (its outputs, rounded to f32 on download, sit within
//! every row of the tolerance table).

use cim_reference::Reference;

conformance::suite!(Reference, Reference::new());
