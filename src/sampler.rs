//! The sampling thread: reads the meters on a drift-free schedule and sends [`crate::tick::Tick`]s.
