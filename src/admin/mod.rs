//! The admin listener: `/metrics`, `/stats`, `/requests`, `/healthz`, `/readyz`, on its own port.
