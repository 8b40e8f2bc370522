//! Session tracking with an inactivity timeout (sans-IO). Being written.
