//! The CIM oracle.
