//! Wire formats of the IM servers: requests decoded into [`crate::event::Event`]s, decisions
//! encoded into the bytes each server expects. No rules, no HTTP framework.

pub mod openim;
