//! Remoting over TCP: a bounded server and a multiplexed client, shared by the broker, the
//! control plane, the sidecar and `rocketmesh bench`.

pub mod client;
pub mod server;

pub use client::{ClientError, RemotingClient};
pub use server::{serve, Connection, Handler, ServerConfig};

#[cfg(test)]
mod tests;
