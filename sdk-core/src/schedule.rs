//! Upload scheduling: when to cut batches and when to send (sans-IO). Being written.
