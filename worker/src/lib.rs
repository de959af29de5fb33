//! The hbac worker: models (MobileNetV3-Large, EfficientNetV2-B2), the data loader and
//! augmentations, the training loop, weight import, and the worker service loop (register,
//! lease, heartbeat, report). It never imports the coordinator.
//!
//! Status: models and trainer are the next milestone (issue 3); the worker's inputs —
//! the `.npy` cache and the reference preprocessing — live in `hbac-common`.
