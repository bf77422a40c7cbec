//! Pure OpenAI/vLLM protocol code, no I/O and no clock: the lenient request view, usage injection and
//! its removal, the incremental SSE parser and usage extraction.
