//! The bundled broker node: a single-process RocketMQ broker that a 4.x SDK and a Pop client can
//! use directly (design.md section 5).

pub mod clients;
pub mod topics;
