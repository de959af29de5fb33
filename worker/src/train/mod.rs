//! The training recipe: loss, learning-rate schedule, augmentations, data feeding and the loop.

pub mod augment;
pub mod bench;
pub mod data;
pub mod loss;
pub mod recipe;
pub mod schedule;
pub mod trainer;
