//! Pure attribution: splits each tick's measured energy among the requests in flight by their work.
//! No clock, no I/O: time and progress come in as arguments.
